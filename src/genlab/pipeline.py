"""A trained model as the Python API gives it (docs/python-api.md): `Pipeline` (the model in
eval mode on a device, the uniform methods sample / encode / decode / reconstruct, with the
input and option checks) and `DataInfo` (what its images are). `genlab.api.load` makes one
from a run, `genlab.export.load_export` from an export folder.

Torch-free at import: torch is imported by the calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from genlab import GenlabError
from genlab.models import hints


# -- what a model's images are ---------------------------------------------------------------------
@dataclass(frozen=True)
class DataInfo:
    """The images a model takes and makes: float tensors [n, *image_shape] with values in
    `value_range` (the data's uint8 levels / 255; a DDPM maps them to [-1, 1] inside itself)."""

    name: str | None  # the dataset it was trained on (data=<name>); None when unknown
    image_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...] | None  # label k is class_names[k], when the names are known
    binarize: str | None = None  # data.binarize of training: null, dynamic or static
    value_range: tuple[float, float] = (0.0, 1.0)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (an export's config.json holds it)."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataInfo:
        names = data.get("class_names")
        return cls(
            name=data.get("name"),
            image_shape=tuple(int(v) for v in data["image_shape"]),
            num_classes=int(data["num_classes"]),
            class_names=tuple(str(n) for n in names) if names is not None else None,
            binarize=data.get("binarize"),
            value_range=tuple(float(v) for v in data.get("value_range", (0.0, 1.0))),
        )


def data_info(data_cfg: Mapping[str, Any] | None, model) -> DataInfo:
    """The DataInfo of a run's `data:` config (None for a checkpoint found without one: then
    only what the model itself knows)."""
    from genlab.sample.latent import CLASS_NAMES

    data_cfg = data_cfg or {}
    name = data_cfg.get("name")
    names = data_cfg.get("class_names") or CLASS_NAMES.get(name)
    return DataInfo(
        name=name,
        image_shape=tuple(int(v) for v in model.image_shape),
        num_classes=int(model.spec.num_classes),
        class_names=tuple(str(n) for n in names) if names else None,
        binarize=data_cfg.get("binarize"),
    )


# -- a loaded model --------------------------------------------------------------------------------
class Pipeline:
    """A trained model ready to use: `model` (the LightningModule, in eval mode on `device`),
    `data` (DataInfo), `source` (the checkpoint or export folder it came from).

    Images go in and come out as float tensors [n, C, H, W] in [0, 1] (uint8 images are divided
    by 255), on any device; results are on the pipeline's device. A model that cannot do
    something (an AE has no prior to sample, a DDPM no encoder) raises the model's GenlabError.
    """

    def __init__(self, model, data: DataInfo, source: Path, run_dir: Path | None = None):
        self.model, self.data, self.source, self.run_dir = model, data, Path(source), run_dir

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def capabilities(self):
        return self.model.capabilities

    @property
    def device(self):
        return self.model.device

    def __repr__(self) -> str:
        return f"Pipeline({self.kind} on {self.device}, data={self.data.name}, from {self.source})"

    def sample(
        self,
        n: int,
        labels=None,
        *,
        seed: int | None = None,
        generator=None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
    ):
        """n images drawn from the model. labels (conditional models): one class for all, one
        per image, or None to cycle over the classes. seed (or a torch.Generator on the
        pipeline's device) makes the draw repeatable. Diffusion models: sampler (a name of
        genlab.diffusion.SAMPLERS), steps, eta, guidance_scale; None is the model's own setting.
        They are checked and resolved as sample.py's (genlab.sampler_rules.plan_sampling)."""
        import torch

        from genlab.specs import is_int

        if not self.capabilities.generative:
            try:
                return self.model.sample(1)  # raises the model's refusal
            except GenlabError as err:  # its hint names the run it was loaded from
                where = str(self.run_dir or self.source)
                raise GenlabError(str(err).replace("<this run>", where)) from None
        if not is_int(n) or n < 1:
            raise GenlabError(f"sample(n={n!r}): n must be an integer >= 1.")
        steer = {"sampler": sampler, "steps": steps, "eta": eta, "guidance_scale": guidance_scale}
        steer = {k: v for k, v in steer.items() if v is not None}
        if steer and not self.capabilities.diffusion:
            shown = ", ".join(f"{k}={v!r}" for k, v in steer.items())
            raise GenlabError(
                f"{shown} steer a diffusion sampler, but this {self.kind} decodes latent codes "
                "and has none: drop them."
            )
        if steer:
            self.model.sampler_plan(**steer)  # refused before any label or generator work
        labels = self._labels(labels, n, "labels", cycle=True)
        if generator is None and seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        try:
            with torch.no_grad():
                return self.model.sample(n, labels, generator=generator, **steer)
        except ValueError as err:  # the model's own checks (guidance without conditioning)
            raise GenlabError(f"{self.kind}.sample: {err}.") from None

    def encode(self, x, y=None):
        """(n, latent_dim) codes of images x (a VAE's posterior mean, an AE's code); y: their
        labels, which conditional models need."""
        return self._with_encoder("encode_mean", x, y)

    def reconstruct(self, x, y=None):
        """The model's reconstructions of images x, in [0, 1]."""
        return self._with_encoder("reconstruct", x, y)

    def decode(self, z, y=None):
        """Mean images in [0, 1] for latent codes z [n, latent_dim]; y for conditional models."""
        import torch

        if not self.capabilities.encoder:
            return self.model.decode_images(z)  # raises the model's refusal
        z = torch.as_tensor(z, device=self.device).float()
        k = self.capabilities.latent_dim
        if z.dim() != 2 or z.shape[1] != k:
            raise GenlabError(
                f"decode: codes must have shape [n, {k}] for this {self.kind}, not {list(z.shape)}."
            )
        labels = self._labels(y, len(z), "y")
        with torch.no_grad():
            return self.model.decode_images(z, labels)

    # -- input checks ------------------------------------------------------------------------------
    def _with_encoder(self, method: str, x, y):
        import torch

        if not self.capabilities.encoder:
            return getattr(self.model, method)(x)  # raises the model's refusal
        x = self._images(x)
        labels = self._labels(y, len(x), "y")
        with torch.no_grad():
            return getattr(self.model, method)(x, labels)

    def _images(self, x):
        import torch

        x = torch.as_tensor(x, device=self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if tuple(x.shape[1:]) != self.data.image_shape or x.dim() != 4:
            shape = ", ".join(map(str, self.data.image_shape))
            raise GenlabError(
                f"this {self.kind} takes images of shape [n, {shape}], not {list(x.shape)}."
            )
        return x

    def _labels(self, y, n: int, key: str, cycle: bool = False):
        """Labels as a long tensor of n classes; None for unconditional models."""
        import torch

        if not self.capabilities.conditional:
            if y is not None and cycle:  # asking an unconditional model for a class is a mistake
                raise GenlabError(
                    f"{key}= picks a class, but this {self.kind} is unconditional: drop it. "
                    + hints.conditional(self.kind)
                )
            return None  # encode/decode/reconstruct: a batch's labels are simply not needed
        classes = self.data.num_classes
        if y is None:
            if cycle:
                return torch.arange(n, device=self.device) % classes
            raise GenlabError(
                f"this conditional {self.kind} codes an image together with its class: pass "
                f"{key}= (one label per image, 0..{classes - 1})."
            )
        labels = torch.as_tensor(y, device=self.device).long().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(n).clone()
        if labels.numel() != n or labels.min() < 0 or labels.max() >= classes:
            raise GenlabError(
                f"{key}= must be one class or {n} classes, each in 0..{classes - 1}; got "
                f"{labels.tolist()[:8]}{'...' if labels.numel() > 8 else ''}."
            )
        return labels

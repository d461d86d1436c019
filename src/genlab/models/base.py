"""What every genlab LightningModule shares: the optimizer from config, `stage/name` metrics that
are exact dataset averages (also across DDP ranks), and preview grids sent to the loggers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

from genlab import GenlabError
from genlab.registry import has_fused_kernel, optimizer_class, require_fused_optimizer
from genlab.specs import ModelSpec, build_spec
from genlab.viz.grids import (
    GRID_COLUMNS,
    log_images,
    sample_grid_shape,
    shows_images,
    write_preview,
)

# Values of single training steps, logged every `trainer.log_every_n_steps` steps: curves in the
# loggers, not final results (genlab.train leaves them out of metrics.json). The epoch mean of
# the loss is `train/loss_epoch`, the other `train/<name>` are epoch means too.
STEP_LOSS, STEP_LR = "train/loss_step", "train/lr"
STEP_METRICS = (STEP_LOSS, STEP_LR)


def eval_mean() -> MeanMetric:
    """The mean of a val/test metric. A NaN is kept (torchmetrics' default drops NaN values with
    a warning), so one image with a non-finite value makes the epoch's number NaN and the run's
    DivergenceGuard stops it, instead of a finite mean over the other images passing."""
    return MeanMetric(nan_strategy="disable")


# Where a checkpoint keeps the running sums of the epoch it was written in (on_save_checkpoint).
TRAIN_SUMS = "genlab_train_sums"


def build_optimizer(spec: dict, parameters, mixed_precision: bool = False) -> torch.optim.Optimizer:
    """The optimizer a config describes, with `fused` resolved: null (the default) picks torch's
    fused kernels where the class has them (Adam, AdamW, SGD, Adagrad), every parameter is a
    float tensor on a device they support, and the run is not in mixed precision (Lightning
    cannot clip the gradients of a fused optimizer under autocast). One kernel for all
    parameters instead of a handful of small ops per parameter makes MLP training steps on a
    CPU 1.1-1.5x faster (docs/benchmarks.md); the arithmetic is the same update."""
    spec = dict(spec)
    target = spec.pop("_target_")
    cls = optimizer_class(target)
    fused = spec.pop("fused", None)
    params = [p for p in parameters if p.requires_grad]
    has_fused = has_fused_kernel(cls)
    if fused is None:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = _get_fused_kernels_supported_devices()
        fused = (
            has_fused
            and not mixed_precision
            and all(p.is_floating_point() and p.device.type in devices for p in params)
        )
    elif fused and not has_fused:
        require_fused_optimizer(target)  # raises, naming the class and the fix
    if has_fused:
        spec["fused"] = bool(fused)
    return cls(params, **spec)


def build_scheduler(spec: Mapping[str, Any], optimizer: torch.optim.Optimizer, trainer):
    """The learning-rate scheduler a `scheduler` config describes (a torch scheduler or a
    genlab.schedules factory of genlab.registry.SCHEDULERS), called with the optimizer and,
    where it takes `total_steps` and the config does not set it, the run's optimizer steps."""
    import inspect
    import math

    from genlab.registry import scheduler_partial

    make = scheduler_partial(spec)
    if "total_steps" in inspect.signature(make).parameters and "total_steps" not in spec:
        total = trainer.estimated_stepping_batches if trainer is not None else math.inf
        if not math.isfinite(total):
            raise GenlabError(
                f"scheduler={spec['_target_'].rsplit('.', 1)[-1]} shapes the learning rate over "
                "the run's optimizer steps, but this run has no length: set trainer.max_epochs "
                "or trainer.max_steps."
            )
        return make(optimizer, total_steps=max(1, int(total)))
    return make(optimizer)


@dataclass(frozen=True)
class Capabilities:
    """What a model can do. Callers (sample.py's tasks, train.py, the metrics) ask these
    instead of testing a model's name, so a new model only has to state its own."""

    generative: bool  # sample(n, labels) draws images of the data distribution
    encoder: bool  # encode_mean / reconstruct / decode_images map images to codes and back
    conditional: bool  # takes class labels: sample(n, labels=...) draws a chosen class
    diffusion: bool  # has a noising process (model.schedule) and an iterative sampler
    gaussian_latent: bool  # z has a Gaussian prior (slerp and prior sampling make sense)
    latent_dim: int | None  # size of z for encoder models; None without a latent code


class GenerativeModule(pl.LightningModule):
    """Subclasses set `spec_class`, `metric_names`, `capabilities`, and implement
    `compute_terms`, `preview_images` and the methods their capabilities promise (the defaults
    below refuse)."""

    kind = ""  # its spec's name (model=<kind>), set below: for messages, never to branch on
    metric_names: tuple[str, ...] = ("loss",)
    preview_count = 32  # images per preview grid
    # The submodules that do the heavy lifting: what `speed.compile` compiles.
    networks: tuple[str, ...] = ()

    spec_class: type[ModelSpec] = ModelSpec  # the typed spec that holds this model's defaults

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.kind = cls.spec_class.name

    def __init__(self, spec: ModelSpec | None = None, **fields):
        """Build from a spec, or from its keys (Hydra's instantiate of conf/model/ and
        Lightning's load_from_checkpoint pass keys; a key the spec lacks is an error naming it,
        and every value is checked against its rule)."""
        super().__init__()
        if spec is None:
            spec = build_spec(self.spec_class, fields)
        elif fields:
            raise TypeError(f"pass either a spec or its keys, not both: {sorted(fields)}")
        self.spec = spec
        # The checkpoint's `hyper_parameters` are the spec as plain data; loading rebuilds the
        # model from them. Not sent to the loggers: genlab.train logs the whole run config,
        # which holds these under `model` (Lightning would log them once more at the top level,
        # where the model's `name`, vae, would replace the run's, vae-fashion_mnist).
        self.save_hyperparameters(spec.hparams(), logger=False)
        self.image_shape = tuple(int(v) for v in spec.image_shape)
        self.optimizer_cfg = dict(spec.optimizer)
        # The run's `scheduler` config (conf/scheduler/), set by genlab.train; not part of the
        # spec, since the schedule is the run's (how long it goes), not the model's: None or a
        # null _target_ is the constant rate.
        self.scheduler_cfg: dict[str, Any] | None = None
        # Where preview grids are written per validation epoch, and how many epochs of them
        # stay (the run's `previews` config, set by genlab.train); None: not written.
        self.preview_dir: Path | None = None
        self.preview_keep = 5
        # MeanMetric keeps a weighted sum and count, synchronised across ranks at compute(),
        # so val/test numbers are averages over every image exactly once.
        self._train_totals: torch.Tensor | None = None
        self._train_names: list[str] = []
        self._train_count = 0
        self._resumed_sums: dict | None = None  # a checkpoint's sums, for the epoch it resumes
        self.eval_metrics = nn.ModuleDict(
            {f"{s}_{n}": eval_mean() for s in ("val", "test") for n in self.metric_names}
        )

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> GenerativeModule:
        """The model a checkpoint's `hyper_parameters` describe (its weights not loaded yet).
        Keys an older genlab stored and this one no longer has are left out."""
        return cls(build_spec(cls.spec_class, hparams, strict=False))

    # -- the interface every model offers -------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    def sample(self, n: int, labels: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """n images in [0, 1] drawn from the model (labels: one class per image, conditional)."""
        from genlab.models import hints

        raise GenlabError(
            f"this {self.kind} is not a generative model: it cannot sample. "
            + hints.generative(self.kind)
        )

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The model's best reconstruction of x, in [0, 1]."""
        from genlab.models import hints

        raise GenlabError(
            f"this {self.kind} has no encoder: it cannot reconstruct an image. "
            + hints.encoder(self.kind)
        )

    def encode_mean(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(n, latent_dim) codes of x: the AE's code, a VAE's posterior mean."""
        from genlab.models import hints

        raise GenlabError(
            f"this {self.kind} has no encoder: it has no latent code of an image. "
            + hints.encoder(self.kind)
        )

    def decode_images(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images in [0, 1] for latent codes z."""
        raise GenlabError(f"this {self.kind} has no decoder of latent codes")

    def preview_labels(self, n: int) -> torch.Tensor | None:
        """Labels for n preview samples (cycling over the classes), None if unconditional."""
        return None

    # -- to implement --------------------------------------------------------------------------
    def compute_terms(self, x, y) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (scalar training loss, {metric name: per-image values})."""
        raise NotImplementedError

    def sample_grid(self, rows: int) -> tuple[int, int]:
        """(count, columns) of a grid of `rows` rows of samples with preview_labels: one class
        per column where those labels cycle over the classes (genlab.viz.grids)."""
        cycles = self.preview_labels(1) is not None
        return sample_grid_shape(rows, self.num_classes if cycles else None)

    def preview_images(self, x, y) -> dict[str, torch.Tensor]:
        """Return {name: images in [0, 1]} to show in the loggers after each validation."""
        return {}

    def apply_speed_switches(self, *, compile: bool = False, channels_last: bool = False) -> None:
        """The `speed:` config switches. Neither changes what the model computes, and both keep
        the state_dict as it is, so checkpoints load with or without them."""
        if channels_last:
            # Weights in NHWC make every convolution run NHWC (inputs follow the weights).
            self.to(memory_format=torch.channels_last)
        if compile:
            for name in self.networks:
                getattr(self, name).compile()  # in place: parameter names keep no prefix

    # -- shared loop ---------------------------------------------------------------------------
    def _check_shape(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.image_shape:
            raise GenlabError(
                f"this {type(self).__name__} was built for images of shape "
                f"{list(self.image_shape)} "
                f"but got {list(x.shape[1:])}: use the data config it was trained on."
            )

    def training_step(self, batch, batch_idx):
        x, y = batch
        self._check_shape(x)
        loss, terms = self.compute_terms(x, y)
        # Epoch means are accumulated here with one tensor op per step: a Lightning self.log
        # call costs ~1-2 ms each on CPU, as much as a whole small-model step.
        step_totals = torch.stack(
            [loss.detach() * len(x), *(v.detach().sum() for v in terms.values())]
        )
        if self._train_totals is None or self._train_totals.shape != step_totals.shape:
            self._start_sums(step_totals, ["loss", *terms])
        self._train_totals += step_totals
        self._train_count += len(x)
        every = self.trainer.log_every_n_steps
        # Lightning writes step values after step s when (s + 1) % every == 0, at step s: log on
        # exactly those steps, so each recorded point is the loss of the step it is plotted at
        # (logging at s % every == 0 wrote a value one step stale, or none).
        if every and (self.global_step + 1) % every == 0:
            self.log(STEP_LOSS, loss, on_step=True, on_epoch=False, prog_bar=True)
            if self.trainer.lr_scheduler_configs:
                # Only a schedule makes the learning rate worth a curve (DDPM's warm-up); the
                # rate this step used, before the scheduler moves it on.
                lr = self.trainer.optimizers[0].param_groups[0]["lr"]
                self.log(STEP_LR, float(lr), on_step=True, on_epoch=False)
        return loss

    def _start_sums(self, like: torch.Tensor, names: list[str]) -> None:
        """Zero sums for a new epoch, or the sums a checkpoint of this same epoch held."""
        self._train_totals, self._train_names, self._train_count = torch.zeros_like(like), names, 0
        resumed, self._resumed_sums = self._resumed_sums, None
        # Matched by epoch, not by which hooks ran: Lightning 2.6 calls no on_train_epoch_start
        # for an epoch resumed mid-way, and a checkpoint from an epoch's end must not carry its
        # sums into the next epoch.
        if resumed and resumed["epoch"] == self.current_epoch and resumed["names"] == names:
            self._train_totals = resumed["totals"].to(like)
            self._train_count = int(resumed["count"])

    # The epoch's running sums travel in the checkpoint (Lightning keeps only the results it
    # logged itself, not a module's): a run resumed mid-epoch then averages over every batch of
    # the epoch, not only those after the resume. Tensors and plain data, for weights_only loads.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._train_totals is not None:
            checkpoint[TRAIN_SUMS] = {
                "epoch": int(self.current_epoch),
                "names": list(self._train_names),
                "totals": self._train_totals.detach().cpu().clone(),
                "count": int(self._train_count),
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._check_weights_fit(checkpoint.get("state_dict") or {})
        self._resumed_sums = checkpoint.get(TRAIN_SUMS)

    def _check_weights_fit(self, weights: dict) -> None:
        """Refuse weights of another network shape by name, before Lightning loads them (a
        resume with resume_changes=allow may change a key that shapes the network)."""
        own = self.state_dict()
        wrong = sorted(set(own) ^ set(weights)) + [
            f"{k}: {list(v.shape)} in the checkpoint, {list(own[k].shape)} here"
            for k, v in weights.items()
            if k in own and getattr(v, "shape", None) is not None and v.shape != own[k].shape
        ]
        if wrong:
            raise GenlabError(
                f"The checkpoint's weights do not fit this {self.kind or type(self).__name__} "
                f"built from the config ({'; '.join(wrong[:3])}"
                f"{f'; and {len(wrong) - 3} more' if len(wrong) > 3 else ''}). The keys that "
                "shape the network (model.arch, latent_dim, mlp.*, conv.*, unet.*, conditional) "
                "must be the ones it was trained with."
            )

    def on_train_epoch_start(self) -> None:
        self._train_totals, self._train_count = None, 0

    def on_train_epoch_end(self) -> None:
        if self._train_totals is None:
            return
        means = self._train_totals / max(1, self._train_count)
        for name, value in zip(self._train_names, means, strict=True):
            key = "train/loss_epoch" if name == "loss" else f"train/{name}"
            self.log(key, value, on_step=False, on_epoch=True, sync_dist=True)

    def eval_terms(self, stage: str, x, y) -> dict[str, torch.Tensor]:
        """Extra per-image metrics computed only on val/test (e.g. importance-sampled NLL)."""
        return {}

    def _eval_step(self, stage: str, batch) -> None:
        x, y = batch
        self._check_shape(x)
        loss, terms = self.compute_terms(x, y)
        terms.update(self.eval_terms(stage, x, y))
        self.eval_metrics[f"{stage}_loss"].update(loss.detach(), weight=x.shape[0])
        for name, values in terms.items():
            self.eval_metrics[f"{stage}_{name}"].update(values.detach())
        for name in ("loss", *terms):
            metric = self.eval_metrics[f"{stage}_{name}"]
            self.log(
                f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "loss"
            )

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0 and self._should_preview():
            # Previews are drawn here, while weight-averaging callbacks (EMA) have their
            # averaged weights swapped in for validation.
            x, y = batch
            # Full rows only (sample_grid_shape): 32 images in 8 columns, 30 in a CVAE's 10.
            columns = self.sample_grid(1)[1]
            count = min(self.preview_count, len(x))
            count = count // columns * columns or count
            x, y = x[:count], y[:count]
            for name, images in self.preview_images(x, y).items():
                nrow = columns if name == "samples" else GRID_COLUMNS  # reconstruction pairs
                pixels = log_images(self.loggers, f"val/{name}", images, self.global_step, nrow)
                if self.preview_dir is not None:  # the same bytes as a file, for any logger
                    epoch = self.trainer.current_epoch
                    write_preview(pixels, self.preview_dir, epoch, name, self.preview_keep)
        self._eval_step("val", batch)

    def _should_preview(self) -> bool:
        trainer = self.trainer
        every = int(getattr(self, "preview_every_n_epochs", 1) or 0)
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and (shows_images(self.loggers) or self.preview_dir is not None)
            and every > 0
            and (trainer.current_epoch + 1) % every == 0
        )

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def configure_optimizers(self):
        precision = str(self._trainer.precision) if self._trainer is not None else ""
        optimizer = build_optimizer(
            self.optimizer_cfg, self.parameters(), mixed_precision=precision.endswith("-mixed")
        )
        if not (self.scheduler_cfg or {}).get("_target_"):
            return optimizer  # scheduler=constant
        # _trainer: None outside a fit (tests step optimizers by hand), read only when needed.
        scheduler = build_scheduler(self.scheduler_cfg, optimizer, self._trainer)
        # Per optimizer step, not per epoch: every schedule of conf/scheduler/ counts steps.
        lr_scheduler = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

"""Turn a trained run into pictures: `run(cfg)` loads a run or checkpoint, does one task
(samples, reconstructions, interpolate, manifold, traverse, latent_scatter, classes, anomaly,
denoise) and writes PNGs without overwriting anything.

The `sample.py` script at the top of the repo is a thin Hydra wrapper around `run`. Each task is
one function per model family (latent-variable models: AE, VAE, CVAE; diffusion: DDPM); `TASKS`
says which model types it serves and why it refuses the others, so a new model or task is one more
entry. `load_run` is the loader any sampling code can share.
Importing this module is cheap: torch is imported inside functions, so bad input fails fast.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab import GenlabError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Model type (hyper_parameters["name"]) -> class, imported only when a checkpoint needs it.
MODEL_CLASSES = {
    "ae": "genlab.models.AE",
    "vae": "genlab.models.VAE",
    "cvae": "genlab.models.CVAE",
    "ddpm": "genlab.models.DDPM",
}

# fmt: off
CLASS_NAMES = {
    "mnist": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}
# fmt: on

# interpolate's images per row when `steps` is null (conf/sample.yaml): `steps` has no single
# default, since for a DDPM's other tasks null means the model's own sample_steps.
INTERPOLATE_STEPS = 10

# Which dataset an in-distribution set is compared with by default (same image shape).
DEFAULT_ANOMALY_DATA = {"fashion_mnist": "mnist", "mnist": "fashion_mnist"}

AE_NOT_GENERATIVE = (
    "An AE is not a generative model: it has no prior over its latent space, the codes of the "
    "data leave gaps in it, and random codes decode to images nothing like the data (seed "
    "001, lecture 004). Train a VAE to sample: `python train.py model=vae`."
)

# Why a DDPM refuses the latent-code tasks: its latent x_T is noise with the image's own shape,
# reached by the fixed forward (noising) process, not inferred by an encoder.
DDPM_NO_ENCODER = (
    "A DDPM has no encoder: its latent x_T is noise of the image's own shape, reached by the "
    "fixed forward noising process, not inferred from an image."
)
DDPM_REFUSALS = {
    "reconstructions": f"{DDPM_NO_ENCODER} task=denoise shows that forward process on test images.",
    "manifold": f"{DDPM_NO_ENCODER} It has no low-dimensional latent plane to draw.",
    "traverse": f"{DDPM_NO_ENCODER} Its latent dims are pixels of noise, with no meaning to vary "
    "one at a time; task=interpolate walks between noise draws instead.",
    "latent_scatter": f"{DDPM_NO_ENCODER} There are no latent means of test images to plot.",
    "anomaly": "A DDPM has no reconstruction error to score test images with; its likelihood bound "
    "on the test set (test/bpd, bits per dim) is in the run's metrics.json.",
}


# -- options ---------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _invalid(key: str, value: Any, accepted: str) -> GenlabError:
    shown = f"'{value}'" if isinstance(value, str) else repr(value)
    return GenlabError(f"Invalid option: {key}={shown}. {key} must be {accepted}.")


def check_options(opts: DictConfig) -> None:
    """Raise GenlabError on the first bad option, before torch is even imported."""
    if OmegaConf.is_missing(opts, "run") or not opts.get("run"):
        raise GenlabError(
            "No run given: pass run=<run dir> (the folder holding config.yaml and "
            "checkpoints/) or run=<path to a .ckpt file>."
        )
    task = opts.get("task")
    if task not in TASKS:
        raise _invalid("task", task, f"one of {', '.join(TASKS)}")
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("n", lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 (or null)"),
        ("seed", lambda v: _is_int(v) and 0 <= v < 2**63, "an integer >= 0"),
        ("batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("steps", lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 (or null)"),
        ("mode", lambda v: v is None or v in ("linear", "slerp"), "one of linear, slerp (or null)"),
        (
            "sampler",
            lambda v: v is None or v in ("ddpm", "ddim"),
            "one of ddpm, ddim (or null: the model's own choice)",
        ),
        ("eta", lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 (or null)"),
        (
            "guidance_scale",
            lambda v: v is None or (_is_number(v) and v >= 0),
            "a number >= 0 (or null)",
        ),
        ("strip_steps", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("overwrite", lambda v: isinstance(v, bool), "true or false"),
        ("traverse_range", lambda v: _is_number(v) and v > 0, "a number > 0"),
        ("label", lambda v: v is None or (_is_int(v) and v >= 0), "a class index >= 0 or null"),
        ("max_images", lambda v: v is None or (_is_int(v) and v >= 2), "an integer >= 2 or null"),
        (
            "device",
            lambda v: (
                isinstance(v, str)
                and (v in ("auto", "cpu", "cuda", "mps") or v.startswith("cuda:"))
            ),
            "one of auto, cpu, cuda, cuda:N, mps",
        ),
    ]
    for key, ok, accepted in checks:
        if key in opts and not ok(opts[key]):
            raise _invalid(key, opts[key], accepted)
    steps = opts.get("steps")
    if task == "interpolate" and steps is not None and steps < 2:
        raise _invalid("steps", steps, "an integer >= 2 for task=interpolate (both ends are shown)")


def pick_device(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GenlabError(f"device={name} but no CUDA GPU is visible: use device=cpu or auto.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GenlabError("device=mps but MPS is not available here: use device=cpu or auto.")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise _invalid("device", name, "one of auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise GenlabError(
            f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s)."
        )
    return device


# -- loading a run ---------------------------------------------------------------------------------
def _best_checkpoint(folder: Path) -> Path | None:
    """The `epoch=*.ckpt` ModelCheckpoint kept (the best val/loss), else last.ckpt."""
    kept = sorted(folder.glob("epoch=*.ckpt"))
    if len(kept) > 1 and (folder / "last.ckpt").is_file():
        # save_top_k > 1: the newest checkpoint's callback state names the best one.
        from genlab.checkpoints import load_checkpoint

        try:
            state = load_checkpoint(folder / "last.ckpt")
        except GenlabError:  # a damaged last.ckpt must not hide the intact epoch=*.ckpt files
            state = {}
        for cb in ((state.get("callbacks") if isinstance(state, dict) else None) or {}).values():
            best = Path(str(cb.get("best_model_path", "") if isinstance(cb, dict) else ""))
            if best.name and (folder / best.name).is_file():
                return folder / best.name
    if kept:
        return max(kept, key=lambda p: p.stat().st_mtime)
    last = folder / "last.ckpt"
    return last if last.is_file() else None


def _locate(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run dir or None) for a run dir, its checkpoints/ folder or a .ckpt."""
    if path.is_file():
        parent = path.parent
        run_dir = parent.parent if parent.name == "checkpoints" else parent
        return path, run_dir if (run_dir / "config.yaml").is_file() else None
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        ckpt = _best_checkpoint(folder)
        if ckpt is not None:
            run_dir = folder.parent if folder.name == "checkpoints" else folder
            return ckpt, run_dir if (run_dir / "config.yaml").is_file() else None
    where = "does not exist" if not path.exists() else "holds no checkpoint"
    raise GenlabError(
        f"run={path} {where}: pass a run dir (outputs/runs/<date>/<run>, with config.yaml and "
        "checkpoints/epoch=*.ckpt or last.ckpt) or the path of a .ckpt file."
    )


def _init_kwargs(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters `cls.__init__` accepts. Checkpoints may hold extra keys (a VAE's
    `beta_norm` ends up there when loggers record it), which would break the constructor."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())
        names |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break  # this class takes no **kwargs, so nothing reaches its parents
    return {k: v for k, v in hparams.items() if k in names and k != "self"}


def load_model(ckpt: Path, device="cpu"):
    """(model in eval mode on `device`, its type name) from a genlab checkpoint.

    Loaded with genlab.checkpoints.load_checkpoint (torch.load with weights_only=True): a
    checkpoint can execute no code, so files from anyone are safe to open. The weights are the
    checkpoint's `state_dict`, which for a run trained with EMA (a DDPM) holds the averaged
    weights; the raw ones under `current_model_state` are only for resuming training.
    """
    from hydra.utils import get_class

    from genlab.checkpoints import load_checkpoint

    try:
        state = load_checkpoint(ckpt)
    except ValueError as err:  # load_checkpoint converts torch's usual errors; not this one
        raise GenlabError(f"{ckpt} is not a readable PyTorch checkpoint ({err}).") from None
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in state:
        raise GenlabError(
            f"{ckpt} holds no model hyperparameters: it is not a checkpoint written by "
            "`python train.py`."
        )
    name = hparams.get("name")
    if name not in MODEL_CLASSES:
        raise GenlabError(
            f"{ckpt} holds a model of type {name!r}, which genlab cannot load: known types are "
            f"{', '.join(MODEL_CLASSES)}."
        )
    cls = get_class(MODEL_CLASSES[name])
    try:
        model = cls(**_init_kwargs(cls, hparams))
        model.load_state_dict(state["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise GenlabError(
            f"{ckpt}: the weights do not fit a {name} built from the checkpoint's "
            f"hyperparameters ({str(err).splitlines()[0]})."
        ) from None
    return model.to(device).eval(), name


def _known_datasets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "data").glob("[!_]*.yaml"))


def _compose_data(name: str, data_dir: str | None) -> DictConfig:
    from genlab.data.module import data_config

    return data_config(name, data_dir)


def _read_run_config(path: Path) -> DictConfig:
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    from genlab.config import validate

    def broken(why: str) -> GenlabError:
        return GenlabError(
            f"{path} no longer loads ({why}). Repair it, or pass the checkpoint alone "
            f"(run={path.parent}/checkpoints/<file>.ckpt dataset=<name>)."
        )

    try:
        cfg = OmegaConf.load(path)
    except (YAMLError, OmegaConfBaseException, UnicodeDecodeError) as err:
        raise broken(str(err).strip().splitlines()[0]) from None
    if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("data"), DictConfig):
        raise broken("it has no `data:` section")
    if not isinstance(cfg.get("model"), DictConfig):
        raise broken("it has no `model:` section")
    try:
        validate(cfg)
    except GenlabError as err:
        raise broken(str(err)) from None
    except OmegaConfBaseException as err:
        raise broken(str(err).strip().splitlines()[0]) from None
    return cfg


@dataclass
class LoadedRun:
    """A trained model plus what it was trained on.

    `cfg` is the run's config.yaml (None for a checkpoint found without one); `test_split()`
    loads the test images of the run's dataset, or of another one with the same image shape.
    """

    model: Any
    name: str  # model type: ae | vae | cvae | ddpm
    checkpoint: Path
    run_dir: Path | None
    cfg: DictConfig | None
    _splits: dict = field(default_factory=dict, repr=False)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.model.image_shape)

    @property
    def home(self) -> Path:
        """Where outputs go by default: the run dir, else the checkpoint's folder."""
        return self.run_dir or self.checkpoint.parent

    def data_config(
        self, data: str | None = None, data_dir: str | None = None, key: str = "dataset"
    ) -> DictConfig:
        """The data config of `data` (default: the run's dataset) rooted at `data_dir`; `key`
        names the option that chose it in errors."""
        own = self.cfg.data if self.cfg is not None else None
        if data is None and own is None:
            raise GenlabError(
                f"{self.checkpoint} has no config.yaml beside it, so the dataset it was trained "
                "on is unknown: name it with dataset=mnist|fashion_mnist|cifar10."
            )
        if data is None or (own is not None and data == own.name):
            spec = OmegaConf.create(OmegaConf.to_container(own, resolve=True))
            if data_dir is not None:
                spec.root = data_dir
        else:
            spec = _compose_data(data, data_dir or (own.root if own is not None else None))
            if own is not None:  # a network-less run stays network-less for its other data
                spec.download = own.get("download", spec.download)
        if list(spec.image_shape) != list(self.image_shape):
            same = [
                d
                for d in _known_datasets()
                if list(_compose_data(d, None).image_shape) == list(self.image_shape)
            ]
            raise GenlabError(
                f"{key}={spec.name} holds images of shape {list(spec.image_shape)} but this "
                f"{self.name} takes {list(self.image_shape)}: choose a dataset of that shape "
                f"({', '.join(same) or 'none known'})."
            )
        return spec

    def test_split(self, data: str | None = None, data_dir: str | None = None):
        """(uint8 images [N, C, H, W], int64 labels [N]) of a test split, on the CPU."""
        from genlab.train import build_datamodule

        spec = self.data_config(data, data_dir)
        key = (spec.name, str(spec.root))
        if key not in self._splits:
            spec.on_device = False
            try:
                datamodule = build_datamodule(OmegaConf.create({"data": spec, "seed": 0}))
            except (TypeError, ValueError) as err:
                raise GenlabError(
                    f"the data config of {self.run_dir or self.checkpoint} no longer builds a "
                    f"datamodule ({err})."
                ) from None
            datamodule.setup("test")
            self._splits[key] = datamodule.splits["test"]
        return self._splits[key]


def load_run(path: str | Path, device="cpu") -> LoadedRun:
    """Load a run dir (its best checkpoint and config.yaml), its checkpoints/ folder or a .ckpt,
    onto `device` (a torch.device or a name: auto, cpu, cuda, ...).

    The model is always built from the checkpoint's own hyperparameters, so it matches its
    weights; config.yaml only says which data the run used.
    """
    ckpt, run_dir = _locate(Path(path).expanduser())  # a wrong path fails before torch loads
    device = pick_device(device) if isinstance(device, str) else device
    cfg = _read_run_config(run_dir / "config.yaml") if run_dir is not None else None
    if cfg is not None:
        from genlab.train import build_datamodule

        try:  # a config whose data section no longer builds is caught now, not mid-task
            build_datamodule(cfg)
        except (TypeError, ValueError, ImportError) as err:
            raise GenlabError(
                f"{run_dir / 'config.yaml'} no longer loads (its data section does not build: "
                f"{err})."
            ) from None
    model, name = load_model(ckpt, device)
    return LoadedRun(model=model, name=name, checkpoint=ckpt, run_dir=run_dir, cfg=cfg)


# -- writing ---------------------------------------------------------------------------------------
def write_outputs(
    out_dir: Path, stem: str, writers: Mapping[str, Callable[[Path], Any]], overwrite: bool
) -> list[Path]:
    """Write files `<stem><ext>` (one per writer) into out_dir, all under one free name.

    Each file is written to a unique temp name first, then published: with `overwrite`, by
    rename; otherwise by a hard link, which fails rather than replace a file that appeared
    meanwhile, and the next free name `<stem>-1`, `<stem>-2`, ... is taken instead. Readers
    never see a half-written file, and two commands never clobber each other.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temps = {ext: out_dir / f".{stem}.{token}.partial{ext}" for ext in writers}
    try:
        for ext, write in writers.items():
            write(temps[ext])
        for k in count():
            name = stem if k == 0 else f"{stem}-{k}"
            targets = {ext: out_dir / f"{name}{ext}" for ext in writers}
            if overwrite:
                for ext, target in targets.items():
                    os.replace(temps[ext], target)
                return list(targets.values())
            if any(t.exists() for t in targets.values()):
                continue
            published: list[Path] = []
            try:
                for ext, target in targets.items():
                    _publish_new(temps[ext], target)
                    published.append(target)
            except FileExistsError:
                for target in published:
                    target.unlink()
                continue
            return published
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def _publish_new(temp: Path, target: Path) -> None:
    try:
        os.link(temp, target)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if target.exists():
            raise FileExistsError(target) from None
        os.replace(temp, target)


# -- one job: a loaded run, the options, and shared helpers ----------------------------------------
@dataclass
class Job:
    run: LoadedRun
    opts: DictConfig
    n: int | None
    out_dir: Path

    @property
    def model(self):
        return self.run.model

    @property
    def device(self):
        return self.run.model.device

    def generator(self, device=None):
        """A fresh generator seeded from `seed`: pictures never depend on global RNG state."""
        import torch

        return torch.Generator(device=device or self.device).manual_seed(int(self.opts.seed))

    def progress(self, iterable, desc: str, total: int | None = None):
        from tqdm.auto import tqdm

        # disable=None: a bar on a terminal, silence in logs and tests
        return tqdm(iterable, desc=desc, total=total, disable=None, leave=False)

    def chunks(self, total: int, desc: str):
        size = int(self.opts.batch_size)
        starts = range(0, total, size)
        return ((s, s + size) for s in self.progress(starts, desc, total=len(starts)))

    def test_split(self):
        """The whole test split: uint8 images and labels, on the CPU."""
        return self.run.test_split(self.opts.dataset, self.opts.data_dir)

    def test_images(self, count: int):
        """`count` test images on the device as floats in [0, 1], with their labels. The choice
        is a seeded random subset, the same for any run on the same data."""
        import torch

        images, labels = self.test_split()
        if count > len(images):
            raise GenlabError(
                f"task={self.opts.task} with n={self.n} needs {count} test images but the test "
                f"split has {len(images)}: choose a smaller n."
            )
        pick = torch.randperm(len(images), generator=self.generator("cpu"))[:count]
        return images[pick].to(self.device).float() / 255.0, labels[pick].to(self.device)

    def at_most(self, count: int | None, images, labels):
        """A seeded random subset of `count` images (all of them if count is None)."""
        import torch

        if count is None or count >= len(images):
            return images, labels
        pick = torch.randperm(len(images), generator=self.generator("cpu"))[:count]
        return images[pick], labels[pick]

    def encode(self, images, labels, desc: str = "encoding"):
        """Latent means (VAE, CVAE) or codes (AE) of uint8 or float images, batch by batch."""
        import torch

        out = []
        with torch.no_grad():
            for a, b in self.chunks(len(images), desc):
                x = images[a:b].to(self.device)
                x = x.float() / 255.0 if x.dtype == torch.uint8 else x
                code = self.model.encode(x, labels[a:b].to(self.device))
                out.append(code[0] if isinstance(code, tuple) else code)
        return torch.cat(out)

    def decode(self, z, labels=None, desc: str = "decoding"):
        """Images in [0, 1] (on the CPU) for latent codes z, batch by batch."""
        import torch

        out = []
        with torch.no_grad():
            for a, b in self.chunks(len(z), desc):
                y = None if labels is None else labels[a:b]
                out.append(self.model.decode_images(z[a:b], y).cpu())
        return torch.cat(out)

    @property
    def interpolants(self) -> int:
        """interpolate's images per row, both ends included: `steps`, else INTERPOLATE_STEPS.
        One place for every model, so no handler can read the null default as a number."""
        steps = self.opts.steps
        return INTERPOLATE_STEPS if steps is None else int(steps)

    def class_label(self) -> int:
        label = self.opts.label if self.opts.label is not None else 0
        if label >= self.model.num_classes:
            raise _invalid("label", label, f"a class index in 0..{self.model.num_classes - 1}")
        return label

    def save_grid(self, images, nrow: int, stem: str | None = None) -> list[Path]:
        return self.save_grids({".png": (images, nrow)}, stem)

    def save_grids(self, grids: Mapping[str, tuple[Any, int]], stem: str | None = None):
        """Several grids {suffix: (images, nrow)} as `<stem><suffix>` files under one free name
        (e.g. denoise_reverse.png and denoise_forward.png, then denoise-1_reverse.png, ...)."""
        from torchvision.utils import save_image

        from genlab.viz.grids import make_grid

        def writer(images, nrow):
            grid = make_grid(images, nrow)
            return lambda p: save_image(grid, p, format="png")

        return write_outputs(
            self.out_dir,
            stem or self.opts.task,
            {suffix: writer(images, nrow) for suffix, (images, nrow) in grids.items()},
            self.opts.overwrite,
        )


# -- tasks -----------------------------------------------------------------------------------------
def prior_samples(job: Job) -> list[Path]:
    """n x n decodes of z drawn from the prior (VAE: N(0, I); CVAE: its class's p(z|y)). CVAE:
    labels cycle over the classes (each column one class when n is a multiple of the class
    count), or all `label=`."""
    import torch

    n, model = job.n, job.model
    eps = torch.randn(n * n, model.latent_dim, generator=job.generator(), device=job.device)
    labels = None
    if job.run.name == "cvae":
        if job.opts.label is None:
            labels = model.preview_labels(n * n)
        else:
            labels = torch.full((n * n,), job.class_label(), device=job.device)
    return job.save_grid(job.decode(model.latent_from_noise(eps, labels), labels), nrow=n)


def reconstructions(job: Job) -> list[Path]:
    """n rows of n test images, each above its reconstruction (from the posterior mean)."""
    from genlab.viz.grids import originals_above_reconstructions

    x, y = job.test_images(job.n * job.n)
    recon = job.decode(job.encode(x, y), y)
    return job.save_grid(originals_above_reconstructions(x.cpu(), recon, per_row=job.n), job.n)


def _slerp(a, b, t):
    """Spherical interpolation: for Gaussian codes it keeps the norm typical of the prior,
    where a straight line through the origin's low-density shell would not."""
    import torch

    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1).unsqueeze(-1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    nearly_parallel = sin.abs() < 1e-6
    safe = torch.where(nearly_parallel, torch.ones_like(sin), sin)
    spherical = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / safe
    return torch.where(nearly_parallel, (1 - t) * a + t * b, spherical)


def interpolate(job: Job) -> list[Path]:
    """Rows: n pairs of test images; columns: `steps` decodes from the first code to the second.
    CVAE: each code is inferred with its own label and the row is decoded in the first image's
    class, so the row morphs style within one class."""
    import torch

    n, steps = job.n, job.interpolants
    x, y = job.test_images(2 * n)
    z = job.encode(x, y)
    a, b = z[0::2], z[1::2]
    t = torch.linspace(0, 1, steps, device=job.device).view(1, steps, 1)
    a, b = a.unsqueeze(1), b.unsqueeze(1)
    path = _slerp(a, b, t) if job.opts.mode == "slerp" else (1 - t) * a + t * b
    labels = y[0::2].repeat_interleave(steps)
    return job.save_grid(job.decode(path.reshape(n * steps, -1), labels), nrow=steps)


def manifold(job: Job) -> list[Path]:
    """The decoded latent plane of a 2-d latent as an n x n grid, z1 growing to the right and
    z2 upwards (image (0, 0) at the bottom left, as in a plot). VAE, CVAE: the N(0, 1) quantiles
    5%..95%, an evenly weighted cover of the prior; AE: the box spanned by the test codes."""
    import torch

    k = job.model.latent_dim
    if k != 2:
        raise GenlabError(
            f"task=manifold draws the latent plane of a 2-d latent, but this {job.run.name} has "
            f"latent_dim={k}. Use task=traverse to vary one latent dim at a time, or train with "
            "model.latent_dim=2."
        )
    n = job.n
    if job.run.name == "ae":
        images, labels = job.test_split()
        codes = job.encode(images, labels)
        lo, hi = codes.min(0).values, codes.max(0).values
        axes = [torch.linspace(float(lo[d]), float(hi[d]), n, device=job.device) for d in (0, 1)]
    else:
        quantiles = torch.linspace(0.05, 0.95, n, device=job.device)
        normal = torch.distributions.Normal(0.0, 1.0)
        axes = [normal.icdf(quantiles)] * 2
    z1 = axes[0].repeat(n)  # column index -> z1
    z2 = axes[1].flip(0).repeat_interleave(n)  # top row holds the largest z2
    z = torch.stack([z1, z2], dim=1)
    labels = None
    if job.run.name == "cvae":
        labels = torch.full((n * n,), job.class_label(), device=job.device)
    if job.run.name != "ae":  # quantiles of the prior: the class's own p(z|y) for a CVAE
        z = job.model.latent_from_noise(z, labels)
    return job.save_grid(job.decode(z, labels), nrow=n)


def traverse(job: Job) -> list[Path]:
    """One row per latent dim: n decodes with that dim moved from -r to +r (r=traverse_range)
    around the code of one test image. VAE, CVAE: r in prior standard deviations; AE: in
    standard deviations of the test codes along that dim (AE codes have no common scale)."""
    import torch

    n, k, r = job.n, job.model.latent_dim, float(job.opts.traverse_range)
    x, y = job.test_images(1)
    center = job.encode(x, y)[0]
    scale = torch.ones(k, device=job.device)
    if job.run.name == "ae":
        images, labels = job.test_split()
        scale = job.encode(images, labels).std(0)
    offsets = torch.linspace(-r, r, n, device=job.device)
    z = center.repeat(k, n, 1)  # [k rows, n columns, k dims]
    rows = torch.arange(k, device=job.device)
    z[rows, :, rows] += offsets.unsqueeze(0) * scale.unsqueeze(1)
    labels = y.repeat(k * n)
    return job.save_grid(job.decode(z.reshape(k * n, k), labels), nrow=n)


def _principal_axes(points):
    """2-d coordinates of points and the share of variance each axis explains; an exact SVD
    (torch.pca_lowrank is randomised and would make the picture depend on RNG state)."""
    import torch

    centered = points - points.mean(0)
    _, s, v = torch.linalg.svd(centered, full_matrices=False)
    var = s.pow(2)
    return centered @ v[:2].T, (var[:2] / var.sum()).tolist()


def latent_scatter(job: Job) -> list[Path]:
    """The test set's latent means in 2-d coloured by class; PCA when latent_dim > 2."""
    import torch

    from genlab.viz.plots import latent_scatter as scatter_figure
    from genlab.viz.plots import save_figure

    images, labels = job.at_most(job.opts.max_images, *job.test_split())
    codes = job.encode(images, labels).cpu().double()  # MPS has no float64
    k = codes.shape[1]
    what = "code" if job.run.name == "ae" else "mean of q(z|x)"
    if k == 1:
        points = torch.stack([codes[:, 0], labels.double()], dim=1)
        axis_labels = ("z", "class")
    elif k == 2:
        points, axis_labels = codes, ("z1", "z2")
    else:
        points, share = _principal_axes(codes)
        axis_labels = (f"PCA 1 ({share[0]:.0%} of variance)", f"PCA 2 ({share[1]:.0%} of variance)")
    spec = job.run.data_config(job.opts.dataset, job.opts.data_dir)
    fig = scatter_figure(
        points.numpy(),
        labels.numpy(),
        axis_labels=axis_labels,
        title=f"{job.run.name.upper()} latent {what}, k={k}: {len(codes)} {spec.name} test images",
        class_names=CLASS_NAMES.get(spec.name),
    )
    return write_outputs(
        job.out_dir, "latent_scatter", {".png": lambda p: save_figure(fig, p)}, job.opts.overwrite
    )


def class_rows(job: Job) -> list[Path]:
    """One row per class, n prior samples each; column j uses the same standard-normal draw in
    every row (mapped through each class's prior p(z|y)), so a column shows one 'style'
    rendered as each class."""
    import torch

    n, model = job.n, job.model
    classes = model.num_classes
    eps = torch.randn(n, model.latent_dim, generator=job.generator(), device=job.device)
    labels = torch.arange(classes, device=job.device).repeat_interleave(n)
    z = model.latent_from_noise(eps.repeat(classes, 1), labels)
    return job.save_grid(job.decode(z, labels), nrow=n)


def reconstruction_scores(job: Job, images, labels, desc: str):
    """-log p(x | z = mean code) per image, in nats. CVAE: the lowest over all classes, so
    neither dataset's labels are used (another dataset's labels mean nothing to the model)."""
    import torch

    model = job.model
    candidates = range(model.num_classes) if job.run.name == "cvae" else [None]
    scores = []
    with torch.no_grad():
        for a, b in job.chunks(len(images), desc):
            x = images[a:b].to(job.device).float() / 255.0
            best = None
            for c in candidates:
                y = None if c is None else torch.full((len(x),), c, device=job.device)
                code = model.encode(x, y)
                code = code[0] if isinstance(code, tuple) else code
                nll = model.recon_terms(model.decode(code, y), x)["recon"]
                best = nll if best is None else torch.minimum(best, nll)
            scores.append(best.cpu().double())
    return torch.cat(scores)


def rank_auroc(negatives, positives) -> float:
    """Area under the ROC curve of `score > threshold` flagging positives, computed exactly as
    P(positive score > negative score) + P(equal) / 2 (the Mann-Whitney U statistic)."""
    import torch

    neg = torch.sort(negatives.double()).values
    pos = positives.double()
    below = torch.searchsorted(neg, pos, right=False)
    not_above = torch.searchsorted(neg, pos, right=True)
    return float((below + not_above).double().sum() / (2 * len(neg) * len(pos)))


def _absolute(path) -> str:
    return str(Path(str(path)).expanduser().resolve())


def anomaly(job: Job) -> list[Path]:
    """Reconstruction error of the in-distribution test split vs another dataset's, as
    histograms and as the AUROC of using that error to flag the other dataset."""
    from genlab.viz.plots import save_figure, score_histograms

    own = job.run.data_config(job.opts.dataset, job.opts.data_dir)
    other_name = job.opts.anomaly_data or DEFAULT_ANOMALY_DATA.get(own.name)
    if other_name is None:
        raise GenlabError(
            f"task=anomaly needs a second dataset of the same image shape as {own.name}: "
            "name it with anomaly_data=<dataset> (and anomaly_data_dir=<its data root>)."
        )
    other_dir = job.opts.anomaly_data_dir or job.opts.data_dir or str(own.root)
    other = job.run.data_config(other_name, other_dir, key="anomaly_data")  # same shape only
    if other.name == own.name and _absolute(other.root) == _absolute(own.root):
        raise GenlabError(
            f"anomaly_data={other.name} is the run's own test set: compare with another dataset, "
            "or point anomaly_data_dir= at another copy."
        )
    sets = {}
    for tag, spec in (("in", own), ("out", other)):
        images, labels = job.run.test_split(spec.name, str(spec.root))
        images, labels = job.at_most(job.opts.max_images, images, labels)
        sets[tag] = reconstruction_scores(job, images, labels, f"scoring {spec.name}")
    auroc = rank_auroc(sets["in"], sets["out"])
    in_name = f"{own.name} (in-distribution)"
    out_name = other.name if other.name != own.name else f"{other.name} at {other.root}"
    print(
        f"anomaly: AUROC {auroc:.4f} for flagging {out_name} test images against {own.name} "
        "test images by reconstruction error (1 = perfect separation, 0.5 = chance)"
    )
    summary = {
        "auroc": auroc,
        "score": "reconstruction -log p(x|z=mean code) per image, nats (higher = more anomalous)",
        "in_distribution": {"data": own.name, "root": _absolute(own.root), "n": len(sets["in"])},
        "out_of_distribution": {
            "data": other.name,
            "root": _absolute(other.root),
            "n": len(sets["out"]),
        },
        "mean_score_in": float(sets["in"].mean()),
        "mean_score_out": float(sets["out"].mean()),
        "model": job.run.name,
        "checkpoint": _absolute(job.run.checkpoint),
        "seed": int(job.opts.seed),
    }
    fig = score_histograms(
        {in_name: sets["in"].numpy(), out_name: sets["out"].numpy()},
        xlabel="reconstruction error  -log p(x | z) (nats per image)",
        title=f"{job.run.name.upper()} anomaly scores: AUROC {auroc:.3f}",
    )
    return write_outputs(
        job.out_dir,
        f"anomaly-{other.name}",
        {
            ".png": lambda p: save_figure(fig, p),
            ".json": lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"),
        },
        job.opts.overwrite,
    )


# -- diffusion (DDPM) tasks ------------------------------------------------------------------------
# A DDPM's "latent" is the starting noise x_T, of the image's shape. Every task draws it from one
# seeded generator and then lets the sampler continue with that generator, so a picture depends
# only on seed (and, for the stochastic samplers, on batch_size: each chunk draws its own
# step noise in turn).
@dataclass(frozen=True)
class SamplerPlan:
    sampler: str  # ddpm (ancestral, all T steps) | ddim
    steps: int
    eta: float  # DDIM noise; 0 for ancestral, which has none to set
    guidance_scale: float

    def visited(self, timesteps: int) -> list[int]:
        """The code timesteps the sampler feeds the network, in sampling order."""
        from genlab.diffusion import ddim_timesteps

        if self.sampler == "ddpm":
            return list(range(timesteps - 1, -1, -1))
        return ddim_timesteps(timesteps, self.steps)

    def describe(self) -> str:
        if self.sampler == "ddpm":
            what = f"ancestral sampling, {self.steps} steps"
        else:
            what = f"DDIM, {self.steps} steps, eta={self.eta:g}"
        return what + (f", guidance {self.guidance_scale:g}" if self.guidance_scale else "")


def _sampler_plan(job: Job, steps: int | None, deterministic: bool = False) -> SamplerPlan:
    """Resolve sampler/steps/eta/guidance_scale against the model's own defaults and limits.
    `deterministic`: the task needs the DDIM map x_T -> x_0 with eta = 0 (interpolation)."""
    model, opts = job.model, job.opts
    T = model.schedule.timesteps  # steps <= T is checked before any task runs (_check_supported)
    sampler = opts.sampler
    if deterministic:
        if sampler == "ddpm" or opts.eta:
            what = "sampler=ddpm" if sampler == "ddpm" else f"eta={opts.eta}"
            raise GenlabError(
                f"task={opts.task} needs the deterministic DDIM map from x_T to an image (eta=0): "
                f"with {what} fresh noise enters at every step, so nearby x_T would not give "
                "nearby images. Drop that option."
            )
        return SamplerPlan("ddim", model.sample_steps, 0.0, _guidance(job))
    if sampler == "ddpm":
        if steps not in (None, T):
            raise GenlabError(
                f"sampler=ddpm is ancestral sampling (Ho et al. Algorithm 2): it takes all T={T} "
                f"steps, so steps={steps} does not apply. Use sampler=ddim steps={steps} for fewer "
                "steps, or drop steps=."
            )
        steps = T
    else:
        steps = steps or model.sample_steps
        sampler = sampler or ("ddpm" if steps == T else "ddim")  # the model's own rule
    if sampler == "ddpm":
        if opts.eta is not None:
            raise GenlabError(
                f"eta={opts.eta} sets the noise of DDIM steps, but this is ancestral sampling "
                f"(sampler=ddpm, or steps = T = {T}), which has no eta: use sampler=ddim, or drop "
                "eta=."
            )
        return SamplerPlan("ddpm", T, 0.0, _guidance(job))
    eta = float(model.eta if opts.eta is None else opts.eta)
    return SamplerPlan("ddim", steps, eta, _guidance(job))


def _guidance(job: Job) -> float:
    value = job.opts.guidance_scale
    return float(job.model.guidance_scale if value is None else value)


def _diffusion_labels(job: Job, count: int, per: int = 1):
    """Labels for `count` groups of `per` images: none for an unconditional DDPM; label=, else
    classes cycling over the groups (like the CVAE's samples)."""
    import torch

    if not job.model.conditional:
        return None
    if job.opts.label is None:
        labels = torch.arange(count, device=job.device) % job.model.num_classes
    else:
        labels = torch.full((count,), job.class_label(), device=job.device)
    return labels.repeat_interleave(per)


def _noise(job: Job, count: int, generator):
    import torch

    shape = (count, *job.run.image_shape)
    return torch.randn(shape, generator=generator, device=job.device)


def _diffuse(job: Job, x_T, labels, plan: SamplerPlan, generator, trajectory_at=None):
    """Images in [0, 1] on the CPU sampled from the given x_T, batch by batch; with
    `trajectory_at`, also {t: x_t in [0, 1]} for those visited timesteps."""
    import sys

    import torch

    images, frames = [], {}
    for a, b in job.chunks(len(x_T), "sampling"):
        out = job.model.sample(
            len(x_T[a:b]),
            labels=None if labels is None else labels[a:b],
            generator=generator,
            steps=plan.steps,
            sampler=plan.sampler,
            eta=plan.eta,
            guidance_scale=plan.guidance_scale,
            x_T=x_T[a:b],
            return_trajectory_at=trajectory_at,
            progress=sys.stderr.isatty(),  # a step bar on a terminal, silence in logs and tests
        )
        if trajectory_at is not None:
            out, trajectory = out
            for t, x_t in trajectory.items():
                frames.setdefault(t, []).append(x_t.cpu())
        images.append(out.cpu())
    images = torch.cat(images)
    if trajectory_at is None:
        return images
    return images, {t: torch.cat(parts) for t, parts in frames.items()}


def diffusion_samples(job: Job) -> list[Path]:
    """n x n samples. Conditional DDPM: labels cycle over the classes (each column one class
    when n is a multiple of the class count), or all `label=`."""
    n = job.n
    plan = _sampler_plan(job, job.opts.steps)
    generator = job.generator()
    x_T = _noise(job, n * n, generator)
    images = _diffuse(job, x_T, _diffusion_labels(job, n * n), plan, generator)
    print(f"samples: {plan.describe()}")
    return job.save_grid(images, nrow=n)


def diffusion_class_rows(job: Job) -> list[Path]:
    """One row per class, n samples each; column j starts from the same x_T in every row, so a
    column shows what one noise draw becomes in each class."""
    import torch

    n, classes = job.n, job.model.num_classes
    plan = _sampler_plan(job, job.opts.steps)
    generator = job.generator()
    x_T = _noise(job, n, generator).repeat(classes, 1, 1, 1)
    labels = torch.arange(classes, device=job.device).repeat_interleave(n)
    images = _diffuse(job, x_T, labels, plan, generator)
    print(f"classes: {plan.describe()}")
    return job.save_grid(images, nrow=n)


def diffusion_interpolate(job: Job) -> list[Path]:
    """Rows: n pairs of independent x_T draws (the seeded draw of 2n noise images, split into
    even and odd); columns: `steps` points on the path between them (slerp unless mode=linear),
    each mapped to an image by deterministic DDIM (eta=0, the model's sample_steps), so the ends
    are exactly the DDIM samples of the two draws. Conditional: one class per row."""
    import torch

    n, cols = job.n, job.interpolants
    plan = _sampler_plan(job, None, deterministic=True)
    generator = job.generator()
    ends = _noise(job, 2 * n, generator).flatten(1)
    a, b = ends[0::2].unsqueeze(1), ends[1::2].unsqueeze(1)
    t = torch.linspace(0, 1, cols, device=job.device).view(1, cols, 1)
    # Slerp by default: two draws of N(0, I) in D dims have norm ~sqrt(D) and are nearly
    # orthogonal, so the straight line between them dips to norm ~sqrt(D/2) midway, noise the
    # model never saw at t = T; the great circle keeps the typical norm.
    path = (1 - t) * a + t * b if job.opts.mode == "linear" else _slerp(a, b, t)
    path[:, 0], path[:, -1] = a[:, 0], b[:, 0]  # the exact draws, free of slerp's rounding
    x_T = path.reshape(n * cols, *job.run.image_shape)
    images = _diffuse(job, x_T, _diffusion_labels(job, n, per=cols), plan, generator)
    print(f"interpolate: {plan.describe()}")
    return job.save_grid(images, nrow=cols)


def _evenly_spaced(timesteps: list[int], count: int) -> list[int]:
    """`count` of `timesteps` evenly spaced by position, always with the largest and smallest,
    in descending order (the order the reverse process visits them)."""
    from genlab.diffusion import ddim_timesteps

    ascending = sorted(timesteps)
    picks = ddim_timesteps(len(ascending), min(count, len(ascending)))
    return [ascending[i] for i in picks]


def denoise(job: Job) -> list[Path]:
    """Seed 003's two strips, one row per image. `_reverse`: n samples, x_t at `strip_steps`
    evenly spaced timesteps the sampler visits (from x_T), then the final sample.
    `_forward`: n test images x_0, then x_t ~ q(x_t | x_0) at `strip_steps` evenly spaced
    timesteps up to T - 1, where little of the image is left."""
    from genlab.viz.grids import rows_of_columns

    n, model, k = job.n, job.model, int(job.opts.strip_steps)
    T = model.schedule.timesteps
    plan = _sampler_plan(job, job.opts.steps)
    shown = _evenly_spaced(plan.visited(T), k)
    noised = _evenly_spaced(list(range(T)), k)[::-1]  # ascending: the forward direction
    x0, _ = job.test_images(n)
    generator = job.generator()
    x_T = _noise(job, n, generator)
    forward_noise = _noise(job, n * len(noised), generator).view(len(noised), n, *x0.shape[1:])
    images, frames = _diffuse(job, x_T, _diffusion_labels(job, n), plan, generator, shown)
    reverse = rows_of_columns([frames[t] for t in shown] + [images])

    columns = [x0.cpu()]
    for t, noise in zip(noised, forward_noise, strict=True):
        x_t = model.schedule.q_sample(x0 * 2 - 1, t, noise)
        columns.append(((x_t + 1) / 2).cpu())
    forward = rows_of_columns(columns)
    print(
        f"denoise: reverse ({plan.describe()}): x_t at t = {', '.join(map(str, shown))}, then "
        f"the sample; forward: x_0, then x_t at t = {', '.join(map(str, noised))} "
        f"(code timesteps 0..{T - 1}; t = {T - 1} is x_T)"
    )
    return job.save_grids(
        {"_reverse.png": (reverse, len(shown) + 1), "_forward.png": (forward, len(noised) + 1)}
    )


# -- the dispatch table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    about: str
    handlers: Mapping[str, Callable[[Job], list[Path]]]  # model type -> function
    default_n: int | None = None  # None: the task does not use n
    refusals: Mapping[str, str] = field(default_factory=dict)  # model type -> why not
    # model type -> check(model) -> why this particular model cannot (None: it can), for
    # refusals that depend on how a model was trained rather than on its type.
    limits: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict)

    def refusal(self, name: str, model: Any) -> str | None:
        """Why a `name` model cannot do this task ("" when no reason is recorded), or None."""
        if name not in self.handlers:
            return self.refusals.get(name, "")
        limit = self.limits.get(name)
        return limit(model) if limit is not None and model is not None else None


_ALL = ("ae", "vae", "cvae")


def _needs_conditional_ddpm(model) -> str | None:
    if model.conditional:
        return None
    return (
        "This DDPM is unconditional: it was trained without labels, so it cannot be asked for a "
        "class. Train a class-conditional one with `python train.py model=ddpm "
        "model.conditional=true`."
    )


TASKS: dict[str, Task] = {
    "samples": Task(
        "n x n images from the prior (DDPM: from noise, sampler=ddpm|ddim, steps=)",
        {"vae": prior_samples, "cvae": prior_samples, "ddpm": diffusion_samples},
        default_n=8,
        refusals={"ae": AE_NOT_GENERATIVE},
    ),
    "reconstructions": Task(
        "n rows of n test images above their reconstructions",
        dict.fromkeys(_ALL, reconstructions),
        default_n=8,
        refusals={"ddpm": DDPM_REFUSALS["reconstructions"]},
    ),
    "interpolate": Task(
        "n pairs of test images (DDPM: of x_T draws), `steps` interpolants each",
        {**dict.fromkeys(_ALL, interpolate), "ddpm": diffusion_interpolate},
        default_n=8,
    ),
    "manifold": Task(
        "the decoded latent plane of a 2-d latent, n x n",
        dict.fromkeys(_ALL, manifold),
        12,
        refusals={"ddpm": DDPM_REFUSALS["manifold"]},
    ),
    "traverse": Task(
        "one row per latent dim, n values from -r to r",
        dict.fromkeys(_ALL, traverse),
        9,
        refusals={"ddpm": DDPM_REFUSALS["traverse"]},
    ),
    "latent_scatter": Task(
        "test latent means in 2-d by class (PCA when k > 2)",
        dict.fromkeys(_ALL, latent_scatter),
        refusals={"ddpm": DDPM_REFUSALS["latent_scatter"]},
    ),
    "classes": Task(
        "one row of n samples per class",
        {"cvae": class_rows, "ddpm": diffusion_class_rows},
        default_n=8,
        refusals={
            "ae": "Only a class-conditional model draws a chosen class: train model=cvae "
            "(or model=ddpm model.conditional=true).",
            "vae": "A VAE cannot be asked for a class: train model=cvae "
            "(or model=ddpm model.conditional=true).",
        },
        limits={"ddpm": _needs_conditional_ddpm},
    ),
    "anomaly": Task(
        "reconstruction-error histograms and AUROC vs anomaly_data",
        dict.fromkeys(_ALL, anomaly),
        refusals={"ddpm": DDPM_REFUSALS["anomaly"]},
    ),
    "denoise": Task(
        "the reverse (x_T to sample) and forward (test image to noise) strips, n rows each",
        {"ddpm": denoise},
        default_n=4,
        refusals=dict.fromkeys(
            _ALL,
            "task=denoise shows the noising and denoising processes of a diffusion model: "
            "train one with `python train.py model=ddpm`.",
        ),
    ),
}

# Options that only steer a diffusion sampler; refused for other models rather than ignored.
DDPM_OPTIONS = ("sampler", "eta", "guidance_scale")
# Tasks whose `steps=` is the sampler's step count for a DDPM (interpolate: images per row).
SAMPLER_STEPS_TASKS = ("samples", "classes", "denoise")


def tasks_for(model_type: str, model: Any = None) -> list[str]:
    """The tasks a model of this type can do (given `model`: this model in particular)."""
    return [name for name, task in TASKS.items() if task.refusal(model_type, model) is None]


def _check_supported(task_name: str, run: LoadedRun, opts: DictConfig) -> None:
    """Refuse, before any work, what this model cannot do or options that do not apply to it."""
    task = TASKS[task_name]
    why = task.refusal(run.name, run.model)
    if why is not None:
        can = ", ".join(tasks_for(run.name, run.model))
        raise GenlabError(
            f"task={task_name} is not available for this {run.name} ({run.checkpoint}). "
            + (f"{why} " if why else "")
            + f"A {run.name} can do: task={can}."
        )
    if task_name == "interpolate" and opts.mode == "slerp" and run.name == "ae":
        raise GenlabError(
            "mode=slerp follows great circles of a Gaussian latent (a VAE's or CVAE's prior); an "
            "AE's codes have no such distribution, so slerp means nothing there: use mode=linear."
        )
    if run.name != "ddpm":
        given = [f"{k}={opts[k]}" for k in DDPM_OPTIONS if opts[k] is not None]
        if given:
            raise GenlabError(
                f"{', '.join(given)} steer a diffusion sampler, but this {run.name} decodes "
                "latent codes and has none: drop them (they apply to model=ddpm runs)."
            )
        return
    model = run.model
    T = model.schedule.timesteps
    if task_name in SAMPLER_STEPS_TASKS and opts.steps is not None and opts.steps > T:
        raise _invalid("steps", opts.steps, f"an integer between 1 and this DDPM's T={T}")
    if opts.guidance_scale and not model.conditional:
        raise GenlabError(
            f"guidance_scale={opts.guidance_scale} needs a class-conditional DDPM (classifier-free "
            "guidance mixes its predictions with and without the label), but this one is "
            "unconditional: drop guidance_scale=, or train with model.conditional=true."
        )
    if opts.label is not None and task_name != "classes":
        if not model.conditional:
            raise GenlabError(
                f"label={opts.label} picks a class, but this DDPM is unconditional: drop label=, "
                "or train with model.conditional=true."
            )
        if opts.label >= model.num_classes:
            raise _invalid("label", opts.label, f"a class index in 0..{model.num_classes - 1}")


def options(cfg: DictConfig | Mapping) -> DictConfig:
    """`cfg` over the defaults of conf/sample.yaml, so library callers may pass only the keys
    they set; a key that is not there is refused rather than silently ignored."""
    from omegaconf.errors import ConfigKeyError

    defaults = OmegaConf.load(CONF_DIR / "sample.yaml")
    for key in ("defaults", "hydra"):
        defaults.pop(key, None)
    OmegaConf.set_struct(defaults, True)
    try:
        return OmegaConf.merge(defaults, cfg)
    except ConfigKeyError as err:
        raise GenlabError(
            f"Unknown option {err.full_key!r}: sample.py takes {', '.join(defaults)}."
        ) from None


def run(cfg: DictConfig | Mapping) -> list[Path]:
    """Do `cfg.task` for the run at `cfg.run`; return the files written."""
    cfg = options(cfg)
    check_options(cfg)
    loaded = load_run(str(cfg.run), cfg.device)
    _check_supported(cfg.task, loaded, cfg)
    task = TASKS[cfg.task]
    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else loaded.home / "samples"
    n = None if task.default_n is None else (cfg.n or task.default_n)
    return task.handlers[loaded.name](Job(run=loaded, opts=cfg, n=n, out_dir=out_dir))

"""Loading a trained run: where its checkpoint is, which checkpoint is the best, the model rebuilt
from it (`load_model`) and the run's data (`LoadedRun`, `load_run`).

Below the models: the classes a run may hold are the caller's (`classes`: name -> class;
genlab.models.MODEL_CLASSES for any of genlab's, a latent DDPM's autoencoder types for its
autoencoder), so a model can load another model's run without importing the registry of all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab import GenlabError
from genlab.composition import CONF_DIR, drop_retired_keys
from genlab.registry import data_module
from genlab.run_rules import validate_run_config
from genlab.specs import user_keys
from genlab.untrusted import read_yaml, refuse_interpolations


class RunUnavailable(GenlabError):
    """A run another model was built on is gone or has changed (a latent DDPM's autoencoder):
    its message, which names that run, is passed on as it is."""


# -- loading a run ---------------------------------------------------------------------------------
def best_checkpoint(folder: Path) -> Path | None:
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


def locate(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run dir or None) for a run dir, its checkpoints/ folder or a .ckpt."""
    if path.is_file():
        parent = path.parent
        run_dir = parent.parent if parent.name == "checkpoints" else parent
        return path, run_dir if (run_dir / "config.yaml").is_file() else None
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        ckpt = best_checkpoint(folder)
        if ckpt is not None:  # no link in the run (checkpoints/ included) leads out of it
            from genlab.untrusted import inside

            inside(ckpt, path, f"run={path}")
        if ckpt is not None:
            run_dir = folder.parent if folder.name == "checkpoints" else folder
            return ckpt, run_dir if (run_dir / "config.yaml").is_file() else None
    where = "does not exist" if not path.exists() else "holds no checkpoint"
    raise GenlabError(
        f"run={path} {where}: pass a run dir (outputs/runs/<date>/<run>, with config.yaml and "
        "checkpoints/epoch=*.ckpt or last.ckpt) or the path of a .ckpt file."
    )


def init_kwargs(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters that are keys of `cls`'s spec. Checkpoints may hold others (a VAE's
    `beta_norm` ends up there when loggers record it; keys an older genlab had)."""
    known = set(user_keys(cls.spec_class))
    return {k: v for k, v in hparams.items() if k in known}


def load_model(ckpt: Path, classes: Mapping[str, type], device="cpu"):
    """(model in eval mode on `device`, its type name) from a genlab checkpoint; a model of a
    type not in `classes` is refused before it is built.

    Loaded with genlab.checkpoints.load_checkpoint (torch.load with weights_only=True): a
    checkpoint can execute no code, so files from anyone are safe to open. The weights are the
    checkpoint's `state_dict`, which for a run trained with EMA (a DDPM) holds the averaged
    weights; the raw ones under `current_model_state` are only for resuming training.
    """
    from genlab.checkpoints import load_checkpoint
    from genlab.models.catalog import MODEL_SPECS, REGISTER_HINT

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
    if name not in MODEL_SPECS:  # the names of the models genlab knows, without importing them
        raise GenlabError(
            f"{ckpt} holds a model of type {name!r}, which genlab cannot load: known types are "
            f"{', '.join(MODEL_SPECS)}. {REGISTER_HINT}"
        )
    if name not in classes:
        raise GenlabError(f"{ckpt} holds a {name}, where one of {', '.join(classes)} is needed.")
    cls = classes[name]
    try:
        model = cls.from_hparams(hparams)
        model.load_state_dict(state["state_dict"])
    except RunUnavailable:
        raise  # its message says which run of another model is gone or changed
    except (GenlabError, TypeError, ValueError, RuntimeError) as err:
        raise GenlabError(
            f"{ckpt}: the weights do not fit a {name} built from the checkpoint's "
            f"hyperparameters ({str(err).splitlines()[0]})."
        ) from None
    return model.to(device).eval(), name


def known_datasets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "data").glob("[!_]*.yaml"))


def compose_data(name: str, data_dir: str | None) -> DictConfig:
    from genlab.data.module import data_config

    return data_config(name, data_dir)


def read_run_config(path: Path) -> DictConfig:
    """A run's config.yaml, as data (genlab.untrusted): plain YAML without interpolations,
    checked like a config, its data section checked against genlab.registry."""
    from omegaconf.errors import OmegaConfBaseException

    def broken(why: str) -> GenlabError:
        return GenlabError(
            f"{path} no longer loads ({why}). Repair it, or pass the checkpoint alone "
            f"(run={path.parent}/checkpoints/<file>.ckpt dataset=<name>)."
        )

    try:
        data = read_yaml(path, root=path.parent)
        refuse_interpolations(data, path)
    except GenlabError as err:
        raise broken(str(err).removeprefix(f"{path}: ")) from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        raise broken("it has no `data:` section")
    if not isinstance(data.get("model"), dict):
        raise broken("it has no `model:` section")
    try:
        cfg = OmegaConf.create(data)
        drop_retired_keys(cfg)  # a run of an older genlab still samples
        # A finished run's config: trained elsewhere perhaps (its GPU), its resume is done.
        validate_run_config(cfg, local=False, starting=False)
        # The data section names a dataset genlab reads, with its keys only: checked now, not
        # mid-task (building the module reads no file).
        data_module(OmegaConf.to_container(cfg.data), cfg.get("seed"))
    except GenlabError as err:
        raise broken(str(err)) from None
    except (OmegaConfBaseException, TypeError, ValueError) as err:
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
            spec = compose_data(data, data_dir or (own.root if own is not None else None))
            if own is not None:  # a network-less run stays network-less for its other data
                spec.download = own.get("download", spec.download)
        if list(spec.image_shape) != list(self.image_shape):
            same = [
                d
                for d in known_datasets()
                if list(compose_data(d, None).image_shape) == list(self.image_shape)
            ]
            raise GenlabError(
                f"{key}={spec.name} holds images of shape {list(spec.image_shape)} but this "
                f"{self.name} takes {list(self.image_shape)}: choose a dataset of that shape "
                f"({', '.join(same) or 'none known'})."
            )
        return spec

    def test_split(self, data: str | None = None, data_dir: str | None = None):
        """(uint8 images [N, C, H, W], int64 labels [N]) of a test split, on the CPU."""
        spec = self.data_config(data, data_dir)
        key = (spec.name, str(spec.root), str(spec.get("path")))  # path: data=image_folder's
        if key not in self._splits:
            spec.on_device = False
            try:
                datamodule = data_module(OmegaConf.to_container(spec, resolve=True), 0)
            except (TypeError, ValueError) as err:
                raise GenlabError(
                    f"the data config of {self.run_dir or self.checkpoint} no longer builds a "
                    f"datamodule ({err})."
                ) from None
            datamodule.setup("test")
            self._splits[key] = datamodule.splits["test"]
        return self._splits[key]


def load_run(path: str | Path, classes: Mapping[str, type], device="cpu") -> LoadedRun:
    """Load a run dir (its best checkpoint and config.yaml), its checkpoints/ folder or a .ckpt,
    onto `device` (a torch.device or its name; a user's `auto` is resolved by
    genlab.sample.options.pick_device first); `classes`: the model types accepted, by name
    (load_model).

    The model is always built from the checkpoint's own hyperparameters, so it matches its
    weights; config.yaml only says which data the run used.
    """
    ckpt, run_dir = locate(Path(path).expanduser())  # a wrong path fails before torch loads
    cfg = read_run_config(run_dir / "config.yaml") if run_dir is not None else None
    model, name = load_model(ckpt, classes, device)
    return LoadedRun(model=model, name=name, checkpoint=ckpt, run_dir=run_dir, cfg=cfg)

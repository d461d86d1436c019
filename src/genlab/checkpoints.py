"""Checkpoints that are safe to write and to read.

Writes go to a temporary name and are renamed into place, so a kill during the write leaves the
previous checkpoint intact. Reads never execute pickled code (`weights_only=True`), and a
checkpoint is checked against the config that wants to use it before anything is restored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.plugins.io import TorchCheckpointIO

from genlab import GenlabError
from genlab.atomic import replace_atomically

log = logging.getLogger("genlab")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic writes and weights-only reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        # torch.save straight into the temporary file beside `path`. Lightning's own save goes
        # through fsspec, which stages the whole file in the system temp dir first: a kill
        # mid-write left it there, a full /tmp failed the save while the run dir had room, and
        # moving it onto another file system was a copy.
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return load_checkpoint(path, map_location)


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save, atomically (`replace_atomically`)."""
    import torch

    return replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """torch.load with weights_only=True and a readable error for files that are not safe
    genlab checkpoints (arbitrary pickled objects are refused, never executed)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GenlabError(
            f"Refusing to load {path}: it holds objects other than tensors and plain data "
            f"({first}). genlab checkpoints never do; the file is from elsewhere or was tampered "
            "with. Loading stops here, so none of its code ran."
        ) from None
    except Exception as err:  # noqa: BLE001 - any content: torch's readers raise many kinds
        # (a damaged pickle stream ends in IndexError, KeyError, ValueError, ...).
        raise GenlabError(
            f"Checkpoint {path} is truncated or corrupted ({type(err).__name__}: {err}). "
            "Use another checkpoint of the run (e.g. the best `epoch=*.ckpt`)."
        ) from None


def newest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint with the most optimizer steps in a run's checkpoints folder."""
    folder = Path(folder)
    candidates = [p for p in folder.glob("*.ckpt") if not p.name.startswith(".")]
    if not candidates:
        return None

    def steps(p: Path) -> tuple[int, float]:
        return int(load_checkpoint(p).get("global_step", -1)), p.stat().st_mtime

    return max(candidates, key=steps)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` -> this run's newest checkpoint (None when it has none yet, so a requeued job that
    never saved starts fresh); a run dir -> its newest checkpoint; a file -> itself."""
    if ckpt_path in (None, ""):
        return None
    from genlab.untrusted import inside  # no checkpoint behind a link out of its run

    if ckpt_path == "last":
        found = newest_checkpoint(output_dir / "checkpoints")
        return str(inside(found, output_dir, "ckpt_path=last")) if found else None
    path = Path(ckpt_path)
    if path.is_dir():
        found = newest_checkpoint(path / "checkpoints") or newest_checkpoint(path)
        if found is None:
            raise GenlabError(f"ckpt_path={ckpt_path}: no *.ckpt in {path} or {path}/checkpoints.")
        return str(inside(found, path, f"ckpt_path={ckpt_path}"))
    if not path.is_file():
        raise GenlabError(
            f"ckpt_path={ckpt_path} does not exist. Give a .ckpt file, a run dir, or `last` "
            "(the newest checkpoint of this run's dir)."
        )
    return str(path)


def trained_changes(checkpoint: dict[str, Any], run_config: dict[str, Any], path) -> list[str]:
    """Refuse a checkpoint from another model type or image shape; return the settings that
    `run_config` changes from the checkpoint's, `key: checkpoint value -> requested value`."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if not hparams or "state_dict" not in checkpoint:
        raise GenlabError(f"{path} is not a genlab training checkpoint (no hyper_parameters).")
    model_cfg = run_config.get("model") or {}
    for key, what in (("name", "model type"), ("image_shape", "image shape")):
        have, want = hparams.get(key), model_cfg.get(key)
        if have is not None and want is not None and list_or(have) != list_or(want):
            raise GenlabError(
                f"{path} holds a {what} of {have} but this run is configured for {want}: use the "
                f"model/data config it was trained with (model={hparams.get('name')})."
            )
    return config_changes(*trained_config(checkpoint, path), run_config)


def check_compatible(
    checkpoint: dict[str, Any], run_config: dict[str, Any], path, allow_changes: bool = False
) -> list[str]:
    """Refuse a checkpoint from another model type or image shape, and one trained with other
    settings than `run_config` (the resolved, redacted config of the resuming run) asks for
    unless `allow_changes` (resume_changes=allow), before anything is restored or written.
    Returns the changed settings, `key: checkpoint value -> requested value`, that will apply."""
    changes = trained_changes(checkpoint, run_config, path)
    if changes and not allow_changes:
        raise GenlabError(
            f"Resuming {path} with other settings than it was trained with: "
            f"{'; '.join(changes)}. A resumed run continues the checkpoint's optimizer state, "
            "data position and random streams, so these would be recorded without being what "
            "trained it. Drop those overrides to resume as trained, or add resume_changes=allow "
            "to apply them from the next step on (the restored optimizer takes the new optimizer "
            "settings; config.yaml and the checkpoints record them). Only the keys that say how "
            "long the run goes or how it is observed may change freely (trainer.max_epochs, "
            "max_steps, limit_*_batches, log_every_n_steps, logger, eval, test, save_images, "
            "checkpoint and stopping callbacks: genlab.checkpoints.FREE_ON_RESUME)."
        )
    target = "model.optimizer._target_"
    if any(change.startswith(f"{target}:") for change in changes):
        raise GenlabError(
            f"Resuming {path} with resume_changes=allow cannot change {target}: the checkpoint "
            "holds the state of its own optimizer class, which another class cannot take over. "
            f"Resume with the checkpoint's {target}, or start a new run."
        )
    if changes:
        log.warning(
            "Resuming %s with changed settings (resume_changes=allow), applied from the next "
            "step on and recorded in config.yaml and the checkpoints: %s.",
            path,
            "; ".join(changes),
        )
    return changes


def list_or(v):
    return list(v) if isinstance(v, list | tuple) else v


# Where a checkpoint keeps the resolved, redacted config of the run that wrote it (TrainedConfig).
RUN_CONFIG = "genlab_config"

# The keys a resumed run may change without resume_changes=allow: where things are and what the
# run is called, how long it goes, and how it is observed (validated, logged, evaluated, kept).
# None of them changes what a training step computes. A key listed covers the keys below it.
FREE_ON_RESUME = (
    # names and places
    "ckpt_path",
    "evaluate",
    "resume_changes",
    "name",
    "tags",
    "sweep_name",
    "sweep_job",
    "optimize_metric",
    "paths",
    "data.root",
    "data.download",
    "data.system_dirs",
    "data.on_device",
    "trainer.default_root_dir",
    # how long
    "trainer.max_epochs",
    "trainer.min_epochs",
    "trainer.max_steps",
    "trainer.min_steps",
    "trainer.max_time",
    "trainer.limit_train_batches",
    # how it is observed: validation, logging, the test stage, images, speed switches
    "trainer.limit_val_batches",
    "trainer.limit_test_batches",
    "trainer.limit_predict_batches",
    "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch",
    "trainer.num_sanity_val_steps",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.profiler",
    "data.eval_batch_size",
    "logger",
    "eval",
    "test",
    "save_images",
    "previews",
    "speed",  # compile / channels_last: the same math (README "Speed")
    "model.iwae_k_val",
    "model.iwae_k_test",
    "model.sample_steps",
    "model.sampler",
    "model.eta",
    "model.guidance_scale",
    "model.test_bpd_images",
    "model.bpd_t_chunk",
    "model.preview_steps",
    "model.preview_every_n_epochs",
)
# Entries of `callbacks` that may come, go or change on resume: they keep checkpoints, stop the
# run or watch it, and change no training step. Any other callback must stay as it was.
OBSERVING_CALLBACKS = (
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.EarlyStopping",
    "lightning.pytorch.callbacks.LearningRateMonitor",
    "lightning.pytorch.callbacks.DeviceStatsMonitor",
    "lightning.pytorch.callbacks.Timer",
    "lightning.pytorch.callbacks.TQDMProgressBar",
    "lightning.pytorch.callbacks.RichProgressBar",
    "genlab.sweep.preemption.StopOnRequeueSignal",
)


def trained_config(checkpoint: dict[str, Any], path) -> tuple[dict[str, Any], bool]:
    """The config `checkpoint` was trained with, and whether it is complete. A checkpoint of an
    older genlab holds only its model keys (hyper_parameters, without `_target_`): those, with
    the config.yaml of the run dir it lies in where there is one, compared key by key."""
    stored = checkpoint.get(RUN_CONFIG)
    if stored:
        return stored, True
    from genlab.untrusted import read_yaml, refuse_interpolations  # data only (security.md)

    record = Path(path).parent.parent / "config.yaml"
    config = read_yaml(record, root=record.parent) if record.is_file() else {}
    config = config if isinstance(config, dict) else {}
    refuse_interpolations(config, record)
    config["model"] = dict(checkpoint.get("hyper_parameters") or {})
    return config, False


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat


def _free(key: str, trained: dict[str, Any], requested: dict[str, Any]) -> bool:
    if any(key == free or key.startswith(f"{free}.") for free in FREE_ON_RESUME):
        return True
    if key.startswith("callbacks."):
        name = key.split(".")[1]
        entries = [(side.get("callbacks") or {}).get(name) for side in (trained, requested)]
        # An entry that is absent or null on a side is no callback there.
        targets = [e.get("_target_") if isinstance(e, dict) else e for e in entries]
        return all(t is None or t in OBSERVING_CALLBACKS for t in targets)
    return False


def config_changes(trained: dict, complete: bool, requested: dict) -> list[str]:
    """`key: trained value -> requested value` for each key that differs and may not change
    freely on resume (FREE_ON_RESUME); with an incomplete `trained`, only the keys it has."""
    old, new = _flat(trained), _flat(requested)
    keys = sorted(set(old) | set(new)) if complete else sorted(set(old) & set(new))
    missing = "(absent)"
    return [
        f"{key}: {old.get(key, missing)} -> {new.get(key, missing)}"
        for key in keys
        if list_or(old.get(key, missing)) != list_or(new.get(key, missing))
        and not _free(key, trained, requested)
    ]


class TrainedConfig(pl.Callback):
    """Keeps the run's config in every checkpoint (what `check_compatible` compares a resume
    with), and makes a resumed optimizer use the config's settings.

    Lightning restores an optimizer's param groups, hyperparameters included, from the
    checkpoint, over the ones configure_optimizers built from the config: a changed learning
    rate would be recorded but never used. So the freshly built groups' values are kept at
    fit start and put back into the restored groups when training starts; the optimizer state
    (moments, steps) stays the checkpoint's. Under a schedule the current rate is rescaled by
    new / old base rate and the schedulers' base_lrs follow. Without changes
    (check_compatible allows them only with resume_changes=allow) every value is already equal.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self._built: list[list[dict[str, Any]]] = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_CONFIG] = self.config

    def on_fit_start(self, trainer, pl_module) -> None:
        # After configure_optimizers, before Lightning restores the checkpoint's optimizer.
        self._built = [
            [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
            for opt in trainer.optimizers
        ]

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.ckpt_path or not self._built:
            return
        for opt, built_groups in zip(trainer.optimizers, self._built, strict=True):
            for group, built in zip(opt.param_groups, built_groups, strict=True):
                if "initial_lr" in built and "initial_lr" in group:  # a scheduler drives lr
                    scale = built["initial_lr"] / group["initial_lr"]
                    built = {**built, "lr": group["lr"] * scale}
                group.update(built)
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            groups = scheduler.optimizer.param_groups
            scheduler.base_lrs = [g.get("initial_lr", g["lr"]) for g in groups]
            scheduler._last_lr = [g["lr"] for g in groups]  # what get_last_lr() reports

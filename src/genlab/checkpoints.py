"""Checkpoints that are safe to write and to read.

Writes go to a temporary name and are renamed into place, so a kill during the write leaves the
previous checkpoint intact. Reads never execute pickled code (`weights_only=True`), and a
checkpoint is checked against the config that wants to use it before anything is restored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from genlab import GenlabError
from genlab.atomic import replace_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic writes and weights-only reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        write = lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(
            checkpoint, tmp, storage_options
        )
        replace_atomically(path, write)

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
    except (EOFError, RuntimeError, OSError) as err:
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
    if ckpt_path == "last":
        found = newest_checkpoint(output_dir / "checkpoints")
        return str(found) if found else None
    path = Path(ckpt_path)
    if path.is_dir():
        found = newest_checkpoint(path / "checkpoints") or newest_checkpoint(path)
        if found is None:
            raise GenlabError(f"ckpt_path={ckpt_path}: no *.ckpt in {path} or {path}/checkpoints.")
        return str(found)
    if not path.is_file():
        raise GenlabError(
            f"ckpt_path={ckpt_path} does not exist. Give a .ckpt file, a run dir, or `last` "
            "(the newest checkpoint of this run's dir)."
        )
    return str(path)


def check_compatible(checkpoint: dict[str, Any], model_cfg: dict[str, Any], path) -> None:
    """Refuse a checkpoint from another model type or image shape, before restoring it."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if not hparams or "state_dict" not in checkpoint:
        raise GenlabError(f"{path} is not a genlab training checkpoint (no hyper_parameters).")
    for key, what in (("name", "model type"), ("image_shape", "image shape")):
        have, want = hparams.get(key), model_cfg.get(key)
        if have is not None and want is not None and list_or(have) != list_or(want):
            raise GenlabError(
                f"{path} holds a {what} of {have} but this run is configured for {want}: use the "
                f"model/data config it was trained with (model={hparams.get('name')})."
            )


def list_or(v):
    return list(v) if isinstance(v, list | tuple) else v

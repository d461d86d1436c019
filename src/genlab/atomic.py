"""The one atomic write of the project: checkpoints, torch.save files, metrics.json, sweep
status files and sample.py's pictures all go through `replace_atomically`. Torch-free, so the
sweep's parent process and sample.py's writer use it without importing Lightning."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def replace_atomically(path: str | os.PathLike, write, *, exclusive: bool = False) -> Path:
    """Call `write(tmp)` for a temporary name beside `path`, then rename it onto `path`: readers
    never see a half-written file, and a kill mid-write keeps the previous one. The temporary
    name is unique, so two writers of one path never write into the same file. `exclusive`:
    never replace an existing `path`, not even one that appeared mid-write (FileExistsError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        write(tmp)
        (_publish_new if exclusive else os.replace)(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _publish_new(tmp: Path, path: Path) -> None:
    try:  # a hard link fails rather than replace a file, where a rename would replace it
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(tmp, path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """A text file, atomically (`replace_atomically`)."""
    return replace_atomically(path, lambda tmp: tmp.write_text(text))

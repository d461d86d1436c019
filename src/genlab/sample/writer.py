"""Writing a task's files: atomically, and never over an earlier run's files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from itertools import count
from pathlib import Path
from typing import Any

log = logging.getLogger("genlab")


def write_outputs(
    out_dir: Path, stem: str, writers: Mapping[str, Callable[[Path], Any]], overwrite: bool
) -> list[Path]:
    """Write files `<stem><ext>` (one per writer: `write(path)`) into out_dir, all under one
    free name, and return their paths.

    Each file appears atomically (genlab.atomic.replace_atomically); the partial files of a
    write that was killed (their pid is dead) are removed first. With `overwrite`, the
    files replace `<stem><ext>`; otherwise an existing file is never replaced, not even one that
    another command writes meanwhile: the group then moves on to the next free name, `<stem>-1`,
    `<stem>-2`, ..., so two commands never clobber each other.
    """
    from genlab.atomic import remove_stale_partials, replace_atomically

    for path in remove_stale_partials(out_dir) if out_dir.is_dir() else ():
        log.warning("Removed %s, left by a write that was killed", path)
    if overwrite:
        return [replace_atomically(out_dir / f"{stem}{ext}", w) for ext, w in writers.items()]
    for k in count():
        name = stem if k == 0 else f"{stem}-{k}"
        targets = {ext: out_dir / f"{name}{ext}" for ext in writers}
        if any(target.exists() for target in targets.values()):
            continue
        published: list[Path] = []
        try:
            for ext, target in targets.items():
                published.append(replace_atomically(target, writers[ext], exclusive=True))
        except FileExistsError:  # another command took this name mid-write: withdraw ours
            for target in published:
                target.unlink()
            continue
        return published
    raise AssertionError("unreachable: count() never ends")

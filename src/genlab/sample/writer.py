"""Writing a task's files: atomically, and never over an earlier run's files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from itertools import count
from pathlib import Path
from typing import Any


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

"""The one atomic write of the project: checkpoints, torch.save files, metrics.json, sweep
status files, the run's pictures (samples, previews) and sample.py's pictures all go through
`replace_atomically`; its temporary name is unique, so nothing planted there is written through.
Torch-free, so the sweep's parent process and sample.py's writer use it without importing
Lightning. What a killed write leaves (a `.partial` file, an export's `.<name>.tmp-<pid>`
folder) is removed by the next command that writes there, once its writer is dead."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from pathlib import Path

from genlab import GenlabError

# Failures of the storage, not of the data: the user's to fix (one message, exit code 2).
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def replace_atomically(path: str | os.PathLike, write, *, exclusive: bool = False) -> Path:
    """Call `write(tmp)` for a temporary name beside `path`, then rename it onto `path`: readers
    never see a half-written file, and a kill mid-write keeps the previous one. The temporary
    name is unique, so two writers of one path never write into the same file. `exclusive`:
    never replace an existing `path`, not even one that appeared mid-write (FileExistsError)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        (_publish_new if exclusive else os.replace)(tmp, path)
    except Exception as err:
        problem = _storage_problem(err, path.parent)  # before the partial file frees its space
        if problem is None:
            raise
        raise GenlabError(
            f"Cannot write {path}: {problem}. Nothing was replaced (an earlier {path.name} is "
            "intact) and the partial file is removed. Free space there or make it writable, or "
            "write elsewhere (train.py: hydra.run.dir= or paths.output_root=; sample.py: "
            "out_dir=)."
        ) from None
    finally:
        # Also after a failed write: a partial file would keep the disk full. (On a read-only
        # file system there is none, and unlink fails even so.)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def _storage_problem(err: Exception, folder: Path) -> str | None:
    """What is wrong with the storage when a write into `folder` failed because of it (full,
    read-only, not writable); None for any other failure, which is raised as it is."""
    code = getattr(err, "errno", None)
    if code in _FULL:
        return "the disk is full"
    if code in _UNWRITABLE:
        return f"the folder cannot be written ({os.strerror(code)})"
    if isinstance(err, OSError):
        return None
    # torch.save reports a failed write as a RuntimeError without an errno: ask the disk.
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        disk = os.statvfs(folder)
    except OSError:
        return None
    if disk.f_flag & os.ST_RDONLY:
        return "the file system is read-only"
    if disk.f_bavail * disk.f_frsize < 1 << 20:
        return "the disk is full"
    return None


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


# The temporary name of replace_atomically: `.<name>.<pid>-<8 hex>.partial`.
_PARTIAL = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.partial$")


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Delete the partial files in `folder` whose writer is dead (a kill -9 mid-write leaves
    one: a checkpoint's can be as large as the checkpoint). Files of a live pid are kept: its
    write may still be going on. Run where this machine's processes wrote the folder."""
    removed = []
    for path in Path(folder).glob(".*.partial"):
        match = _PARTIAL.match(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


# The temporary folder of an export (genlab.export): `.<name>.tmp-<pid>`.
_TEMP_DIR = re.compile(r"^\..+\.tmp-(\d+)$")


def remove_stale_temp_dirs(folder: str | os.PathLike, marks: tuple[str, ...]) -> list[Path]:
    """Delete the temporary folders in `folder` whose writer is dead (an export killed
    mid-write leaves one): plain folders of plain files, empty or holding one of the files
    named in `marks` (the writer's own), so that nobody else's folder is taken for one."""
    import shutil

    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        match = _TEMP_DIR.match(path.name)
        if match is None or path.is_symlink() or not path.is_dir() or _alive(int(match.group(1))):
            continue
        files = list(path.iterdir())
        plain = all(p.is_file() and not p.is_symlink() for p in files)
        if plain and (not files or any(p.name in marks for p in files)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True

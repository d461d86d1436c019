"""One live run per run dir, and a resume that fails leaves the dir's records as they were.

- The lock: two runs writing into one dir at once would mix their checkpoints, logs,
  config.yaml and metrics.json. The process that writes a run (global rank 0: Lightning starts
  the other DDP ranks with the same hydra.run.dir, and they write nothing of their own) holds an
  advisory lock (`flock`) on `<run dir>/.genlab.lock` while it runs; a second run into the dir
  is refused, naming the holder. The kernel drops the lock when its holder ends, by kill -9 or a
  crash too, so a dead run never blocks its dir and there is no stale lock to clean up.
- Hydra's records (`.hydra/`): Hydra writes them before the task starts. For a dir that already
  holds them (a resume in place: `ckpt_path=last hydra.run.dir=<run dir>`) `genlab.cli.RunDirGuard`
  holds Hydra's copy back (`defer_hydra_records`), and `genlab.builders.record_config` writes them
  with config.yaml only once Lightning has restored the checkpoint (`write_hydra_records`): a
  resume that fails before that leaves both byte for byte as they were.
- Someone else's files: a new run (no ckpt_path) into a dir that holds results (`check_run_dir`)
  is refused, and so is any dir with a symlink that leads out of it (a `train.log` or
  `checkpoints/` pointing at another file would make the run write there). Checked before Hydra
  opens train.log; the lock itself is opened with O_NOFOLLOW.

Torch-free: genlab.cli uses it before Hydra writes anything.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genlab import GenlabError
from genlab.atomic import remove_stale_partials

log = logging.getLogger("genlab")

LOCK_NAME = ".genlab.lock"
# The rank variables of Lightning's launcher, torchrun and Slurm; read before any process
# group exists. A variable that is unset or 0 says "rank 0" (a plain run sets none).
RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")

_held: dict[Path, int] = {}  # run dir (resolved) -> the open lock file this process holds
_created: set[Path] = set()  # run dirs (resolved) that this process's lock() created
_deferred: tuple[Path, str] | None = None  # (Hydra's records dir, hydra.output_subdir) held back


# Set (the JSON of the job's genlab.sweep.status.JobInfo) for the process tree of a sweep job
# run in a process of its own (genlab.sweep.own_process).
ENV_JOB = "GENLAB_SWEEP_JOB"


def in_sweep_job() -> bool:
    """Whether this process runs a job of a sweep (a Hydra multirun, or a job's own process):
    genlab.sweep.job then takes the run; a single run never imports genlab.sweep."""
    if os.environ.get(ENV_JOB):
        return True
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_rank_zero() -> bool:
    """Whether this process writes the run: a single process, or global rank 0 of a DDP run."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARS)


def lock(run_dir: str | os.PathLike) -> bool:
    """Take the lock of `run_dir` for this process; False when this process holds it already.
    GenlabError when another live run holds it, or when the dir cannot be written at all."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return False
    try:
        if not run_dir.exists():
            _created.add(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(run_dir / LOCK_NAME, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise GenlabError(foreign_link(run_dir, run_dir / LOCK_NAME)) from None
        raise GenlabError(unwritable(run_dir, err)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
        os.close(fd)
        raise GenlabError(busy(run_dir, holder)) from None
    except OSError as err:  # a file system without locks (some network mounts): run unguarded
        log.warning("Cannot lock %s (%s): nothing stops a second run in it.", run_dir, err)
        os.close(fd)
        return False
    if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_nlink > 1:
        os.close(fd)  # truncating a hard link would truncate the file it shares
        what = "a hard link to a file outside, or not a plain file, in"
        raise GenlabError(foreign_link(run_dir, run_dir / LOCK_NAME, what))
    _held[run_dir] = fd
    # No other live run writes here now: the partial files of a killed write can go.
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "previews"):
        for path in remove_stale_partials(folder):
            log.warning("Removed %s, left by a write that was killed", path)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with contextlib.suppress(OSError):  # the holder's name only serves the refusal's message
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {started}\n".encode(), 0
        )
    return True


def check_not_busy(run_dir: str | os.PathLike) -> None:
    """GenlabError when another live run holds `run_dir`'s lock, asked without creating or
    changing anything (so a dir that is no run's stays as it was)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # no lock file (no run there yet), or a link: check_run_dir names it
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
        raise GenlabError(busy(Path(run_dir).resolve(), holder)) from None
    except OSError:  # a file system without locks: lock() says so
        pass
    finally:
        os.close(fd)  # (closing releases the shared lock)


def unlock(run_dir: str | os.PathLike) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # releases the flock; the file stays (deleting it would race a new holder)


@contextlib.contextmanager
def holding(run_dir: str | os.PathLike) -> Iterator[None]:
    """The lock of `run_dir` while the block runs (rank 0 only; kept if already held)."""
    took = is_rank_zero() and lock(run_dir)
    try:
        yield
    finally:
        if took:
            unlock(run_dir)


def busy(run_dir: Path, holder: str) -> str:
    who = holder or "its pid is not recorded yet"
    return (
        f"The run dir {run_dir} is in use by another live run ({who}). Two runs writing into one "
        "dir would mix their checkpoints, logs, config.yaml and metrics.json, so this one stops "
        "before writing anything. Give it a dir of its own (hydra.run.dir=<another dir>, or no "
        "hydra.run.dir for a new dated one), or wait until that run has ended (then "
        f"`ckpt_path=last hydra.run.dir={run_dir}` resumes it)."
    )


def unwritable(path: Path, err: OSError) -> str:
    return (
        f"Cannot write into {path} ({err.strerror or err}). Give the run a writable dir: "
        "hydra.run.dir=<dir>, or GENLAB_OUTPUT_DIR / paths.output_root for the dated run dirs."
    )


# -- someone else's files ---------------------------------------------------------------------
# What a finished (or started) run leaves: a new run into a dir holding one would replace it.
RESULTS = ("config.yaml", "metrics.json", "checkpoints")
# Files written in place (appended or truncated), not replaced by a rename: a hard link there
# would change the file it shares.
IN_PLACE = ("train.log", LOCK_NAME)


def check_run_dir(run_dir: str | os.PathLike, new_run: bool) -> None:
    """Refuse (GenlabError) a run dir (or a sweep dir) with a symlink leading out of it or a
    file written in place that is not a plain file of its own, and, for a `new_run` (no
    ckpt_path), one that holds results already: the run would write over files it does not own.
    """
    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir():
        return
    root = run_dir.resolve()
    for folder, dirs, files in os.walk(run_dir):  # does not descend into linked folders
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink() and not _leads_into(path, root) and not _wandb_core_log(path):
                raise GenlabError(foreign_link(run_dir, path, "a link that leads out of"))
            info = os.lstat(path) if name in IN_PLACE else None
            if info is not None and (not stat.S_ISREG(info.st_mode) or info.st_nlink > 1):
                what = "a hard link to a file outside, or not a plain file, in"
                raise GenlabError(foreign_link(run_dir, path, what))
    held = [name for name in RESULTS if _holds(run_dir / name)]
    if new_run and held:
        raise GenlabError(
            f"hydra.run.dir={run_dir} holds results already ({', '.join(held)}): a new run there "
            "would replace them, so nothing was written. Give the new run a dir of its own "
            "(hydra.run.dir=<a new dir>, or no hydra.run.dir for a new dated one), or resume "
            f"that run in place: `ckpt_path=last hydra.run.dir={run_dir}`."
        )


def resumes_in_place(ckpt_path: str | None, run_dir: str | os.PathLike) -> bool:
    """Whether `ckpt_path` continues the run of `run_dir` itself: `last` where run_dir holds a
    checkpoint (or a run killed before its first one: no checkpoint and no metrics.json, so it
    starts afresh), or a path inside run_dir. Any other ckpt_path (another run's checkpoint,
    `last` beside finished results without checkpoints) starts a new run there, which may not
    take a dir holding results."""
    if ckpt_path in (None, ""):
        return False
    run_dir = Path(run_dir).absolute()
    if str(ckpt_path) == "last":
        has_checkpoint = any((run_dir / "checkpoints").glob("*.ckpt"))
        return has_checkpoint or not (run_dir / "metrics.json").exists()
    return _leads_into(Path(str(ckpt_path)).expanduser().absolute(), run_dir.resolve())


def _wandb_core_log(link: Path) -> bool:
    """wandb's own link from a run's `wandb/<run>/logs/debug-core.log` to its service's log in
    the user's cache (`~/.cache/wandb/logs/core-debug-*.log`): written by wandb, not planted."""
    if link.name != "debug-core.log" or link.parent.name != "logs" or "wandb" not in link.parts:
        return False
    target = Path(os.readlink(link))
    return target.parent.name == "logs" and target.name.startswith("core-debug-")


def _leads_into(link: Path, root: Path) -> bool:
    try:
        return link.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13)
        return False


def check_inside(run_dir: str | os.PathLike, path: Path) -> None:
    """Refuse (GenlabError) a `path` in `run_dir` that is a link leading out of it."""
    run_dir = Path(run_dir)
    if path.is_symlink() and not _leads_into(path, run_dir.resolve()):
        raise GenlabError(
            f"{path} is a link that leads out of the run dir {run_dir}, so sample.py would "
            "write there; nothing was written. Choose the folder yourself with out_dir=<dir>, "
            "or remove the link."
        )


def _holds(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        return any(not p.name.endswith(".partial") for p in path.iterdir())
    return path.exists() or path.is_symlink()


def recorded_metrics(run_dir: str | os.PathLike) -> dict[str, float]:
    """The metrics.json of a run resumed in place: what the resume keeps of the values it does
    not measure again (a finished run's resume re-tests it, its training values stay)."""
    import json

    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: JSON and UTF-8 errors
        metrics = err
    numbers = isinstance(metrics, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    )
    if not numbers:
        raise GenlabError(
            f"{path} is not genlab's metrics.json (a JSON object of numbers), so resuming in "
            "place could not keep its values; nothing was written. Move it away, or resume into "
            f"a new dir: `ckpt_path={Path(run_dir)}` without hydra.run.dir."
        )
    return {str(k): float(v) for k, v in metrics.items()}


def foreign_link(run_dir: Path, path: Path, what: str = "a link that leads out of") -> str:
    return (
        f"{path} is {what} the run dir {run_dir}: writing it would change a file that is not "
        "the run's, so nothing was written. Give the run a new dir (hydra.run.dir=<a new dir>, "
        "or no hydra.run.dir), or replace that entry with a plain file of its own."
    )


def check_run_name(key: str, value: object) -> None:
    """`name` and `sweep_name` end the run's and sweep's folder names: one plain folder name,
    so that a run stays inside the run root (`name=../../x` would leave it)."""
    text = str(value)
    if not text or any(c in text for c in ("/", "\\", "\0")) or len(text) > 200:
        raise GenlabError(
            f"Invalid config: {key}={value!r}. {key} names the run's folder inside the run "
            "root, so it must be 1 to 200 characters without '/' or '\\' (e.g. "
            f"{key}=vae-beta4). To choose the folder itself, use "
            f"{'hydra.sweep.dir' if key == 'sweep_name' else 'hydra.run.dir'}=<dir>."
        )


# -- Hydra's records of a resumed run ----------------------------------------------------------
def defer_hydra_records(records_dir: Path, output_subdir: str) -> None:
    """Remember that Hydra's records for `records_dir` are genlab's to write (later)."""
    global _deferred
    _deferred = (Path(records_dir), output_subdir)


def write_hydra_records(task_cfg: Any) -> None:
    """Hydra's three records of this run (as `hydra.core.utils.run_job` writes them, secrets
    masked) into the dir `defer_hydra_records` held them back from; nothing if none was."""
    global _deferred
    if _deferred is None:
        return
    import copy

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    from genlab.atomic import write_text_atomic
    from genlab.secrets import redact

    folder, subdir = _deferred
    hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
    with read_write(hydra_cfg.hydra), open_dict(hydra_cfg.hydra):  # Hydra made it read-only
        hydra_cfg.hydra.output_subdir = subdir  # what Hydra's own hydra.yaml would say
    records = {
        "config.yaml": task_cfg,
        "hydra.yaml": hydra_cfg,
        "overrides.yaml": hydra_cfg.hydra.overrides.task,
    }
    for name, node in records.items():
        write_text_atomic(folder / name, redact(OmegaConf.to_yaml(node)))
    _deferred = None


# What a run leaves in its dir before it has done anything: genlab's lock, Hydra's records of
# the command line, the log.
BOOKKEEPING = (LOCK_NAME, ".hydra", "train.log")


def discard_if_unused(run_dir: str | os.PathLike) -> bool:
    """Remove `run_dir` when this process created it and it holds nothing but BOOKKEEPING, so
    a run refused before it trained leaves no folder behind. True when it was removed."""
    import shutil

    run_dir = Path(run_dir).resolve()
    if run_dir not in _created or not is_rank_zero():
        return False
    try:
        entries = list(os.scandir(run_dir))
    except OSError:
        return False
    if any(e.name not in BOOKKEEPING or e.is_symlink() for e in entries):
        return False
    unlock(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    _created.discard(run_dir)
    return not run_dir.exists()

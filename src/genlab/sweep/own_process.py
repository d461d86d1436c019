"""A multi-process (DDP) job of a sweep, run in a process tree of its own.

Lightning starts the other ranks by re-running the command line, which in a multirun is the
whole sweep. genlab therefore runs such a job as a plain single run:
`python -m genlab.train <this job's overrides> hydra.run.dir=<job dir>` (the app of train.py
and genlab-train, found through the installed package wherever the sweep was started), with
the job's identity in the environment (ENV_JOB). Its rank 0 starts the other ranks the way
Lightning does for any single run, so every rank composes exactly this job's config,
whichever sweeper chose the values. The sweep process waits for that tree, forwards
Ctrl-C/SIGTERM to it, and removes what is left of it afterwards, so a crashed rank can
neither take the sweep down nor leave processes behind. (Under Slurm, the ranks are Slurm
tasks and Lightning starts none: jobs run in place.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from genlab.rundir import ENV_JOB
from genlab.sweep.status import JobInfo, read_status, write_status

log = logging.getLogger("genlab")

# A job's own process: genlab's training app (genlab.commands), after sys.executable.
TRAIN_COMMAND = ("-m", "genlab.train")


def needs_own_process(cfg: DictConfig) -> bool:
    """Whether Lightning would start more processes by re-running the command line: a DDP-like
    strategy on more than one device or node, outside Slurm (where the ranks are Slurm tasks)."""
    trainer = cfg.get("trainer") or {}
    strategy = trainer.get("strategy", "auto")
    if not isinstance(strategy, str):
        strategy = str(OmegaConf.select(trainer, "strategy._target_", default="ddp"))
    strategy = strategy.lower()
    if any(word in strategy for word in ("spawn", "fork", "single", "dp_notebook")):
        return False
    if strategy == "dp":
        return False
    if "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in (
        "bash",
        "interactive",
    ):
        return False
    devices = trainer.get("devices", 1)
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        many = len(devices) > 1
    elif isinstance(devices, str) and devices.strip().isdigit():
        many = int(devices) > 1
    elif isinstance(devices, str):
        many = devices.strip() == "auto" or "," in devices or devices.strip() == "-1"
    else:
        many = devices == -1 or (isinstance(devices, int) and devices > 1)
    return many or int(trainer.get("num_nodes", 1) or 1) > 1


def _running_job_source() -> tuple[list, str | None]:
    """The running job's hydra.searchpath and primary config name ([], None outside a job of a
    Hydra app): what a job's process must compose from, which Hydra keeps out of its overrides."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hydra = HydraConfig.get()
    except ValueError:  # no job of a Hydra app in this process
        return [], None
    return list(hydra.searchpath), hydra.job.config_name


def _searchpath_override(searchpath) -> list[str]:
    """The user's own config folders as the job's hydra.searchpath override."""
    paths = [str(p) for p in searchpath]
    quoted = [f'"{p}"' if "'" in p else f"'{p}'" for p in paths]
    return [f"hydra.searchpath=[{','.join(quoted)}]"] if paths else []


def _primary_config_flags(config_name: str | None, searchpath) -> list[str]:
    """`--config-dir <folder> --config-name <name>` when the sweep composes a primary config of
    the user's (`--config-name`) from one of the `searchpath` folders: Hydra looks for a primary
    config in its own search path only, not in hydra.searchpath, so the job's process is told
    the folder. [] for genlab's own."""
    from genlab.composition import CONF_DIR

    if not config_name or (CONF_DIR / f"{config_name}.yaml").is_file():
        return []  # genlab's own (Hydra finds genlab's conf/ first)
    for path in searchpath:
        folder = str(path).removeprefix("file://")
        if Path(folder, f"{config_name}.yaml").is_file():
            return ["--config-dir", folder, "--config-name", str(config_name)]
    return []


def run_in_own_process(
    cfg: DictConfig | None,
    job: JobInfo,
    *,
    env: dict[str, str] | None = None,
    keep_hydra_dir: bool = False,
    searchpath: Sequence[str] | None = None,
    config_name: str | None = None,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> float | None:
    """Run `job` as `python -m genlab.train <overrides> hydra.run.dir=<job dir>` and wait; return
    the value its status.json records (NaN when it failed, also when it was killed before it
    could write one). `keep_hydra_dir`: the sweep already wrote <job dir>/.hydra (a DDP job of
    Hydra's own launchers), so the process must not write it again. `started` is told of the
    process (genlab's local launcher forwards signals to every job it runs). `searchpath`: the
    sweep's hydra.searchpath, `config_name` its primary config (defaults: the running job's)."""
    output_dir = Path(job.output_dir)
    if searchpath is None or config_name is None:
        running_searchpath, running_name = _running_job_source()
        searchpath = running_searchpath if searchpath is None else searchpath
        config_name = running_name if config_name is None else config_name
    command = [
        sys.executable,
        *TRAIN_COMMAND,
        *_primary_config_flags(config_name, searchpath),
        *job.overrides,
        *_searchpath_override(searchpath),
        f'hydra.run.dir="{output_dir.resolve()}"',
    ]
    if keep_hydra_dir:
        command.append("hydra.output_subdir=null")
    child_env = {
        **os.environ,
        **(env or {}),
        ENV_JOB: json.dumps({**asdict(job), "own_process": True}),
    }
    if cfg is not None:
        log.info("Job %s runs %s processes on its own: %s", job.num, _devices(cfg), output_dir)
    # Until the job's own process records itself, what status.json says is this (not the
    # outcome of an earlier attempt of the job).
    write_status(output_dir, job, "running", count_attempt=False)
    # A session of its own: the job's ranks can be signalled and cleaned up as one group.
    proc = subprocess.Popen(command, cwd=job.cwd or None, env=child_env, start_new_session=True)
    if started is not None:
        started(proc)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        signal_group(proc.pid, signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handlers[signum] = signal.signal(signum, forward)
    try:
        code = proc.wait()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        _reap_group(proc.pid)
    return _outcome(job, output_dir, code, received)


def _outcome(job: JobInfo, output_dir: Path, code: int, received: list[int]) -> float | None:
    status = read_status(output_dir) or {}
    if status.get("status") in (None, "running"):
        reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        write_status(
            output_dir,
            job,
            "failed",
            error=f"The job's processes ended without a result ({reason}); "
            f"see {output_dir / 'train.log'}.",
            error_type="ProcessFailed",
        )
        status = read_status(output_dir) or {}
    if received or status.get("status") == "interrupted":
        raise SystemExit(code if code > 0 else 128 + (received[-1] if received else 15))
    if status.get("status") != "completed":
        return math.nan
    values = list((status.get("objective") or {}).values())
    return values[0] if values else None


def _devices(cfg: DictConfig) -> str:
    trainer = cfg.get("trainer") or {}
    return f"devices={trainer.get('devices')} x num_nodes={trainer.get('num_nodes', 1)}"


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _reap_group(pgid: int, grace_s: float = 10.0) -> None:
    """Give the job's remaining processes (a rank waiting on a dead peer) a moment, then kill."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)
    signal_group(pgid, signal.SIGKILL)

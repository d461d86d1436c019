"""One job of a sweep.

A job never raises out of `train.py`'s main: a failure (diverged loss, bad combination, a bug)
is written to `status.json` in the job's folder and the job returns, so the sweep goes on; the
exit code is decided when the sweep ends (genlab.sweep.callback). Interruptions (Ctrl-C,
SIGTERM) are the exception: they write a checkpoint, are recorded, and stop the sweep.

DDP inside a sweep: Lightning starts the other ranks by re-running the command line, which in
a multirun is the whole sweep. genlab therefore runs a multi-process job as a plain single run
in a process tree of its own: `python train.py <this job's overrides> hydra.run.dir=<job dir>`.
Its rank 0 starts the other ranks the way Lightning does for any single run, so every rank
composes exactly this job's config, whichever sweeper chose the values. The sweep process waits
for that tree, forwards Ctrl-C/SIGTERM to it, and removes what is left of it afterwards, so a
crashed rank can neither take the sweep down nor leave processes behind. (Under Slurm, the
ranks are Slurm tasks and Lightning starts none: jobs run in place.)
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
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab.sweep.keys import job_values, label, read_sweep_file

log = logging.getLogger("genlab")

STATUS_FILE = "status.json"
# Set for the process tree that runs one DDP job of a sweep (JSON of JobInfo).
ENV_JOB = "GENLAB_SWEEP_JOB"
# Sweepers whose jobs' return value decides something (anything but Hydra's grid sweeper).
_GRID_SWEEPERS = ("BasicSweeper",)


@dataclass
class JobInfo:
    num: int
    output_dir: str
    sweep_dir: str
    overrides: list[str]
    swept: dict[str, str] = field(default_factory=dict)
    label: str = ""
    sweep_name: str = ""
    group: str = ""
    sweeper: str = ""
    cwd: str = ""
    own_process: bool = False  # this process runs the job for a sweep process that waits

    @property
    def optimizing(self) -> bool:
        return bool(self.sweeper) and not self.sweeper.endswith(_GRID_SWEEPERS)


def current_job() -> JobInfo | None:
    """The sweep job this process runs, or None for a plain run."""
    if os.environ.get(ENV_JOB):
        return JobInfo(**json.loads(os.environ[ENV_JOB]))
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    overrides = list(OmegaConf.to_container(hc.overrides.task, resolve=False))
    info = read_sweep_file(hc.sweep.dir) or {}
    swept = job_values(overrides, info.get("keys") or [])
    return JobInfo(
        num=int(hc.job.num),
        output_dir=str(hc.runtime.output_dir),
        sweep_dir=str(hc.sweep.dir),
        overrides=overrides,
        swept=swept,
        label=label(swept),
        sweep_name=info.get("name", ""),
        group=info.get("group", ""),
        sweeper=str(OmegaConf.select(hc, "sweeper._target_", default="")),
        cwd=str(hc.runtime.cwd),
    )


def global_rank() -> int:
    """This process's rank before any process group exists (Lightning/torchrun/Slurm env)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def prepare(cfg: DictConfig, job: JobInfo) -> None:
    """Settings a job takes from its sweep: W&B run name and group, a record of the sweep in
    the run config, and resuming from its own checkpoints when it is run again. Every key set
    here is in the YAML already (`sweep_job: null` in conf/train.yaml), so the config stays in
    struct mode: a typo here fails instead of adding a key."""
    cfg.sweep_job = {
        "sweep": job.sweep_name,
        "group": job.group,
        "num": job.num,
        "swept": dict(job.swept),
    }
    wandb = OmegaConf.select(cfg, "logger.wandb")
    if isinstance(wandb, DictConfig) and "_target_" in wandb:
        if wandb.get("group") is None and job.group:
            wandb.group = job.group
        # Name the run after its swept values unless a name was given on purpose.
        default_name = OmegaConf.to_container(wandb, resolve=False).get("name") == "${name}"
        if job.label and default_name:
            wandb.name = job.label
    if cfg.get("ckpt_path") in (None, "") and _has_checkpoints(job.output_dir):
        # A job folder is unique to its sweep: checkpoints in it come from an earlier
        # attempt of this very job (requeued after preemption, or the sweep run again with
        # the same hydra.sweep.dir). Continue from the newest instead of starting over.
        log.warning("Job %s resumes from its newest checkpoint in %s", job.num, job.output_dir)
        # (genlab.train then also continues the W&B run whose id the checkpoint holds.)
        cfg.ckpt_path = "last"


def _has_checkpoints(output_dir: str) -> bool:
    folder = Path(output_dir) / "checkpoints"
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.glob("*.ckpt"))


def objective(metrics: dict[str, float], cfg: DictConfig) -> float | None:
    """The metric a sweeper optimises (`optimize_metric`), from a finished run's metrics."""
    name = cfg.get("optimize_metric") or "val/loss"
    value = metrics.get(name)
    return None if value is None else float(value)


# -- status.json -------------------------------------------------------------------------------
def write_status(
    output_dir: str | Path, job: JobInfo, status: str, count_attempt: bool = True, **extra: Any
) -> None:
    """Atomically (re)write the job's status.json: running / completed / failed / interrupted
    (/ cancelled, from the Slurm launcher). Each `running` counts an attempt."""
    path = Path(output_dir) / STATUS_FILE
    previous = read_status(output_dir) or {}
    record = {
        "status": status,
        "num": job.num,
        "label": job.label,
        "swept": job.swept,
        "overrides": job.overrides,
        "started": previous.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S"),
        "attempts": previous.get("attempts", 0) + (status == "running" and count_attempt),
        "host": os.uname().nodename,
        "pid": os.getpid(),
    }
    if os.environ.get("SLURM_JOB_ID"):
        record["slurm_job_id"] = (
            os.environ.get("SLURM_ARRAY_JOB_ID")
            and (f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}")
            or os.environ["SLURM_JOB_ID"]
        )
    if status != "running":
        record["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    record.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)


def read_status(output_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(output_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _error_fields(err: BaseException) -> dict[str, str]:
    text = str(err).strip() or type(err).__name__
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return {"error": text, "error_type": type(err).__name__, "traceback": tb[-4000:]}


# -- running a job -----------------------------------------------------------------------------
def run_sweep_job(cfg: DictConfig, run, script: str) -> float | None:
    """Run one sweep job with `run(cfg) -> metrics`; return the value the sweeper optimises
    (NaN when the job failed, which Optuna records as a failed trial)."""
    job = current_job()
    assert job is not None
    if not job.own_process and needs_own_process(cfg):
        return _run_in_own_process(cfg, job, script)
    prepare(cfg, job)

    # These import lightning: only in the process that trains.
    from genlab.callbacks import TrainingInterrupted
    from genlab.sweep import preemption

    rank_zero = global_rank() == 0
    if rank_zero:
        write_status(job.output_dir, job, "running")
    try:
        check_swept_values(cfg, job)
        preemption.install(cfg)
        metrics = run(cfg)
    except TrainingInterrupted as err:
        log.warning("Job %s: %s", job.num, err)
        if rank_zero:
            write_status(job.output_dir, job, "interrupted", **_error_fields(err))
        preemption.hand_over()  # on Slurm: submitit requeues the job and exits
        # Ctrl-C or SIGTERM means "stop": the sweep stops too, with the same exit code.
        raise SystemExit(err.exit_code) from None
    except Exception as err:
        if not rank_zero:
            raise  # rank 0 records the job; a failing rank must exit non-zero
        log.error("Job %s (%s) failed: %s", job.num, job.label or "no swept keys", err)
        write_status(job.output_dir, job, "failed", **_error_fields(err))
        return math.nan
    except BaseException as err:  # a second Ctrl-C; Lightning turns Ctrl-C outside fit into exit 1
        if rank_zero:
            fields = _error_fields(err)
            if isinstance(err, KeyboardInterrupt):
                fields["error"] = "Interrupted by Ctrl-C"
            elif isinstance(err, SystemExit):
                fields["error"] = f"Stopped with exit code {err.code} (Ctrl-C or a kill?)"
            write_status(job.output_dir, job, "interrupted", **fields)
        raise
    value = objective(metrics, cfg)
    name = cfg.get("optimize_metric") or "val/loss"
    if value is None and job.optimizing:
        message = (
            f"optimize_metric={name} was not logged by this run, so the sweeper gets no value. "
            f"Logged: {', '.join(sorted(metrics))}."
        )
        log.error("Job %s: %s", job.num, message)
        if rank_zero:
            write_status(job.output_dir, job, "failed", error=message, error_type="MissingMetric")
        return math.nan
    if rank_zero:
        write_status(job.output_dir, job, "completed", objective={name: value})
    return value


def check_swept_values(cfg: DictConfig, job: JobInfo) -> None:
    """Log the swept values this process trains with, and refuse to train with others than
    the sweep gave this job (every DDP rank runs this check on its own composed config)."""
    from genlab import GenlabError
    from genlab.sweep.keys import overrides_parser

    parser = overrides_parser()
    shown, wrong = [], []
    for key, text in job.swept.items():
        actual = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(actual) or "${" in text:
            # A config group (model=vae) or an interpolation: nothing plain to compare.
            shown.append(f"{key}={text}")
            continue
        expected = parser.parse_override(f"{key}={text}").value()
        shown.append(f"{key}={actual}")
        if actual != expected:
            wrong.append(f"{key}={actual} (the sweep gave {text})")
    log.info("Job %s, rank %s: %s", job.num, global_rank(), ", ".join(shown) or "nothing swept")
    if wrong:
        raise GenlabError(
            f"Job {job.num}, rank {global_rank()} composed {'; '.join(wrong)}: its ranks would "
            "train different models. This is a genlab bug; please report it."
        )


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


def _run_in_own_process(cfg: DictConfig, job: JobInfo, script: str) -> float | None:
    output_dir = Path(job.output_dir)
    command = [
        sys.executable,
        str(Path(script).resolve()),
        *job.overrides,
        f'hydra.run.dir="{output_dir.resolve()}"',
        "hydra.output_subdir=null",  # the sweep already wrote <job dir>/.hydra
    ]
    env = {**os.environ, ENV_JOB: json.dumps({**asdict(job), "own_process": True})}
    log.info("Job %s runs %s processes on its own: %s", job.num, _devices(cfg), output_dir)
    # Until the job's own process records itself, what status.json says is this (not the
    # outcome of an earlier attempt of the job).
    write_status(output_dir, job, "running", count_attempt=False)
    # A session of its own: the job's ranks can be signalled and cleaned up as one group.
    proc = subprocess.Popen(command, cwd=job.cwd or None, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        _signal_group(proc.pid, signum)

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


def _signal_group(pgid: int, signum: int) -> None:
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
    _signal_group(pgid, signal.SIGKILL)

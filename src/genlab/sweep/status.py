"""A sweep job's record, `<job dir>/status.json`: who the job is (its number, swept values,
overrides) and how it stands: running / completed / failed / interrupted, or cancelled (from the
Slurm launcher). The job writes it (genlab.sweep.job), so does the sweep process for a job it
runs in a process tree of its own, and the launcher for a job Slurm ended; the report reads it.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
# Sweepers whose jobs' return value decides something (anything but Hydra's grid sweeper).
_GRID_SWEEPERS = ("BasicSweeper",)


@dataclass
class JobInfo:
    """Who a sweep job is. Travels as JSON (own_process.ENV_JOB) into a DDP job's own process
    tree, so its ranks know they are that job."""

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


def write_status(
    output_dir: str | Path, job: JobInfo, status: str, count_attempt: bool = True, **extra: Any
) -> None:
    """Atomically (re)write the job's status.json: running / completed / failed / interrupted
    (/ cancelled, from the Slurm launcher). Each `running` counts an attempt."""
    # genlab's one atomic write; imported here, as genlab.checkpoints imports lightning.
    from genlab.atomic import write_text_atomic

    path = Path(output_dir) / STATUS_FILE
    previous = read_status(output_dir) or {}
    from_job = "slurm_state" not in extra  # the launcher's records name Slurm's state
    if previous.get("status") == "cancelled" and status in ("interrupted", "failed") and from_job:
        # The Slurm launcher can record `cancelled` before the job's own record: sacct says
        # CANCELLED at scancel, while the job is still checkpointing and closing its W&B run.
        # Slurm's verdict stands; the job's words are added to it.
        detail = extra.get("error")
        extra = {
            k: previous[k] for k in ("error_type", "slurm_job_id", "slurm_state") if k in previous
        }
        extra["error"] = previous.get("error", "") + (
            f"\nThe job itself recorded: {detail}" if detail else ""
        )
        status = "cancelled"
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
    write_text_atomic(path, json.dumps(record, indent=2, default=str))


def read_status(output_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(output_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def error_fields(err: BaseException) -> dict[str, str]:
    text = str(err).strip() or type(err).__name__
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return {"error": text, "error_type": type(err).__name__, "traceback": tb[-4000:]}

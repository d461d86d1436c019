"""A sweep's jobs, read back from the files they wrote: status.json, metrics.json,
.hydra/overrides.yaml and the sweep's sweep.json. Works for any launcher, and for sweeps that
are still running. The report's tables (genlab.sweep.tables) and figures (genlab.sweep.figures)
are drawn from these `Job` records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from genlab.specs import is_number
from genlab.sweep.keys import job_values, label, read_sweep_file
from genlab.sweep.status import STATUS_FILE

REPORT_DIR = "report"  # <sweep dir>/report/: not a job's folder
# Shown (and plotted) by default when a job logged them, in this order.
HEADLINE = (
    "val/loss",
    "val/elbo",
    "val/recon",
    "val/kl",
    "val/mse",
    "val/bpd",
    "test/elbo",
    "test/nll",
    "test/bpd",
    "test/fid",
    "test/fid_domain",
)


@dataclass
class Job:
    """One job of a sweep as its files tell it."""

    num: int
    dir: Path | None
    status: str  # completed | failed | interrupted | cancelled | running | unknown
    swept: dict[str, str] = field(default_factory=dict)  # {swept key: value as written}
    metrics: dict[str, float] = field(default_factory=dict)  # its metrics.json (numbers only)
    # From status.json: what failed, when the job ran, and its Slurm id (under Slurm).
    error: str = ""
    error_type: str = ""
    started: str = ""
    ended: str = ""
    slurm_job_id: str = ""

    @property
    def label(self) -> str:
        return label(self.swept)

    @property
    def error_line(self) -> str:
        first = self.error.strip().splitlines()[0] if self.error.strip() else ""
        return first if len(first) <= 160 else first[:157] + "..."


def _load_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _job_overrides(job_dir: Path) -> list[str]:
    from genlab import GenlabError
    from genlab.untrusted import read_yaml  # as text, never resolved (docs/security.md)

    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        overrides = read_yaml(path)
    except GenlabError:
        return []
    return [str(o) for o in overrides] if isinstance(overrides, list) else []


def _job_num(job_dir: Path, status: dict | None) -> int | None:
    if status and isinstance(status.get("num"), int):
        return status["num"]
    head = job_dir.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def _infer_keys(all_overrides: list[list[str]]) -> list[str]:
    """Without sweep.json: the keys whose value differs between jobs."""
    from genlab.sweep.keys import overrides_parser

    parser = overrides_parser()
    seen: dict[str, set[str]] = {}
    for overrides in all_overrides:
        for o in parser.parse_overrides(overrides):
            seen.setdefault(o.key_or_group, set()).add(o.get_value_element_as_str())
    return [key for key, values in seen.items() if len(values) > 1]


def collect_jobs(sweep_dir: str | Path, finished: bool = False) -> list[Job]:
    """Every job of the sweep in `sweep_dir`, by job number.

    finished: the sweep is over, so a job still marked "running" died without recording its end
    (killed, out of memory, node failure) and counts as failed."""
    sweep_dir = Path(sweep_dir)
    info = read_sweep_file(sweep_dir) or {}
    found: list[tuple[int, Path, dict | None, list[str]]] = []
    for job_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        if job_dir.name.startswith(".") or job_dir.name == REPORT_DIR:
            continue
        status = _load_json(job_dir / STATUS_FILE)
        if status is None and not (job_dir / ".hydra").is_dir():
            continue
        num = _job_num(job_dir, status)
        if num is None:
            continue
        overrides = (status or {}).get("overrides") or _job_overrides(job_dir)
        found.append((num, job_dir, status, overrides))
    keys = info.get("keys") or _infer_keys([f[3] for f in found])

    jobs = []
    for num, job_dir, status, overrides in sorted(found, key=lambda f: f[0]):
        status = status or {}
        metrics = _load_json(job_dir / "metrics.json") or {}
        state = status.get("status") or ("completed" if metrics else "unknown")
        error = status.get("error", "")
        if state == "unknown":
            error = "no status.json: the job did not start, or stopped before recording anything"
        if state == "running" and finished:
            state = "failed"
            error = error or (
                "the job stopped without recording a result (killed, out of memory, or its "
                "node failed); see its train.log"
            )
        swept = status.get("swept") or job_values(overrides, keys)
        jobs.append(
            Job(
                num=num,
                dir=job_dir,
                status=state,
                swept={key: swept[key] for key in keys if key in swept},
                metrics={k: float(v) for k, v in metrics.items() if is_number(v)},
                error=error,
                error_type=status.get("error_type", ""),
                started=status.get("started", ""),
                ended=status.get("ended", ""),
                slurm_job_id=str(status.get("slurm_job_id", "")),
            )
        )
    return jobs


def as_float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def axis_values(jobs: list[Job], key: str) -> list[str]:
    """The values a key takes, numerically sorted when they are all numbers."""
    values: list[str] = []
    for job in jobs:
        v = job.swept.get(key)
        if v is not None and v not in values:
            values.append(v)
    if values and all(as_float(v) is not None for v in values):
        values.sort(key=lambda v: as_float(v))
    return values


def headline_metrics(jobs: list[Job], wanted: list[str] | None = None) -> list[str]:
    logged = {m for job in jobs for m in job.metrics}
    if wanted:
        return [m for m in wanted if m in logged] or list(wanted)
    return [m for m in HEADLINE if m in logged]

"""The report of a sweep: what ran, how it ended, what it gave, side by side.

Written into `<sweep dir>/report/` when a sweep ends, and rebuilt any time with

    python -m genlab.sweep.report <sweep dir> [--metrics val/elbo,val/kl]

- `jobs.csv`, `report.md`: one row per job: its swept values, status, every final metric (the
  job's `metrics.json`), the error of a job that failed, and its folder
- `panel_samples.png`, `panel_reconstructions.png`: the jobs' `samples.png` /
  `reconstructions.png` laid out on the swept axes (rows: first swept key, columns: second; one
  panel per value of any further keys), e.g. a grid of beta x latent_dim figures from one command
- `metrics.png`: each headline metric against the first swept key, one line per value of the
  others
- for a search (Optuna), whose values form no grid: the panels are a gallery of the trials and
  the plots show each metric against each swept key, one point per trial

Everything is read from files the jobs wrote (status.json, metrics.json, .hydra/overrides.yaml,
the sweep's sweep.json), so it works for any launcher and for sweeps still running.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from genlab.sweep.figures import write_metric_plot, write_panels
from genlab.sweep.keys import read_sweep_file
from genlab.sweep.results import REPORT_DIR, Job, collect_jobs, headline_metrics
from genlab.sweep.tables import write_csv, write_markdown

__all__ = ["Report", "collect_jobs", "main", "write_report"]


@dataclass
class Report:
    sweep_dir: Path
    jobs: list[Job]
    keys: list[str]
    metrics: list[str]
    files: list[Path]

    @property
    def markdown_path(self) -> Path:
        return self.sweep_dir / REPORT_DIR / "report.md"


def write_report(
    sweep_dir: str | Path,
    metrics: list[str] | None = None,
    out_dir: str | Path | None = None,
    finished: bool = True,
) -> Report:
    """Write the report of `sweep_dir` into `<sweep_dir>/report/` (or `out_dir`)."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir, finished=finished)
    info = read_sweep_file(sweep_dir) or {}
    keys = [k for k in (info.get("keys") or []) if any(k in job.swept for job in jobs)]
    if not keys and not info:  # no sweep.json: the keys collect_jobs inferred, in job order
        keys = list(dict.fromkeys(k for job in jobs for k in job.swept))
    shown = headline_metrics(jobs, metrics)
    out = Path(out_dir) if out_dir else sweep_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "jobs.csv"]
    write_csv(files[0], jobs, keys)
    # Hydra's grid sweeper runs every combination; a search (Optuna) samples values, which
    # have no grid to lay out.
    grid_sweep = "BasicSweeper" in (info.get("sweeper") or "BasicSweeper")
    images = write_panels(out, jobs, keys, grid_sweep)
    if write_metric_plot(out / "metrics.png", jobs, keys, shown, grid_sweep):
        images.append(out / "metrics.png")
    write_markdown(out / "report.md", sweep_dir, jobs, keys, shown, images)
    files += [out / "report.md", *images]
    return Report(sweep_dir=sweep_dir, jobs=jobs, keys=keys, metrics=shown, files=files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genlab.sweep.report",
        description="Write the report of a sweep dir (tables, image panels, metric plots).",
    )
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. outputs/multirun/<date>/<sweep>")
    parser.add_argument(
        "--metrics", default="", help="comma-separated metrics for the table and plots"
    )
    parser.add_argument("--out", default=None, help="where to write (default: <sweep_dir>/report)")
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        print(f"genlab: error: {sweep_dir} is not a folder.", file=sys.stderr)
        return 2
    from genlab import GenlabError
    from genlab.rundir import check_run_dir

    try:  # its report/ (or a file in it) must not lead out of it: the report is written there
        check_run_dir(sweep_dir, new_run=False)
    except GenlabError as err:
        print(f"genlab: error: {err}", file=sys.stderr)
        return 2
    report = write_report(
        sweep_dir,
        metrics=[m for m in args.metrics.split(",") if m] or None,
        out_dir=args.out,
        finished=False,
    )
    if not report.jobs:
        print(f"genlab: error: no sweep jobs found in {sweep_dir}.", file=sys.stderr)
        return 2
    done = sum(job.status == "completed" for job in report.jobs)
    print(f"{done} of {len(report.jobs)} jobs completed. Report: {report.markdown_path}")
    for path in report.files:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

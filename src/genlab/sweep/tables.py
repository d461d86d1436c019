"""The report's tables: `jobs.csv` (every job, every final metric) and `report.md` (the
headline metrics, the errors of the jobs that did not complete, the pictures)."""

from __future__ import annotations

import csv
from pathlib import Path

from genlab.atomic import replace_atomically, write_text_atomic
from genlab.sweep.keys import read_sweep_file, short_names
from genlab.sweep.results import Job


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}"


def write_csv(path: Path, jobs: list[Job], keys: list[str]) -> None:
    metric_names = sorted({m for job in jobs for m in job.metrics})
    replace_atomically(path, lambda tmp: _write_rows(tmp, jobs, keys, metric_names))


def _write_rows(path: Path, jobs: list[Job], keys: list[str], metric_names: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["num", "status", *keys, *metric_names]
            + ["error", "slurm_job_id", "started", "ended", "dir"]
        )
        for job in jobs:
            writer.writerow(
                [
                    job.num,
                    job.status,
                    *[job.swept.get(k, "") for k in keys],
                    *[job.metrics.get(m, "") for m in metric_names],
                    job.error_line,
                    job.slurm_job_id,
                    job.started,
                    job.ended,
                    str(job.dir.resolve()) if job.dir else "",
                ]
            )


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_markdown(
    path: Path, sweep_dir: Path, jobs: list[Job], keys: list[str], metrics: list[str], images
) -> None:
    info = read_sweep_file(sweep_dir) or {}
    names = short_names(keys)
    done = sum(job.status == "completed" for job in jobs)
    lines = [f"# Sweep {info.get('name') or sweep_dir.name}", ""]
    if info.get("command"):
        lines += [f"`{info['command']}`", ""]
    lines += [
        f"- folder: `{sweep_dir.resolve()}`",
        f"- started: {info.get('started', '?')}",
        f"- swept: {', '.join(f'`{k}`' for k in keys) or 'nothing'}",
        f"- W&B group: `{info.get('group', '')}`",
        f"- jobs: {len(jobs)}, completed: {done}, not completed: {len(jobs) - done}",
        "",
    ]
    header = ["#", "status", *[names[k] for k in keys], *metrics, "error", "folder"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for job in jobs:
        folder = job.dir.relative_to(sweep_dir).as_posix() if job.dir else ""
        cells = [
            str(job.num),
            job.status,
            *[job.swept.get(k, "") for k in keys],
            *[_fmt(job.metrics.get(m)) for m in metrics],
            _md_escape(job.error_line),
            f"[{_md_escape(folder)}](../{folder.replace(' ', '%20')})" if folder else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [job for job in jobs if job.status != "completed"]
    if failed:
        lines += ["", "## Jobs that did not complete", ""]
        for job in failed:
            lines += [f"**#{job.num}** `{job.label or '-'}`: {job.status}", ""]
            if job.error:
                body = "\n".join(job.error.strip().splitlines()[:15])
                lines += ["```", body, "```", ""]
    if images:
        lines += ["", "## Pictures", ""]
        for image in images:
            lines += [f"![{image.stem}]({image.name})", ""]
    write_text_atomic(path, "\n".join(lines) + "\n")

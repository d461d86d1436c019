"""The report of a sweep: what ran, how it ended, what it gave, side by side.

Written into `<sweep dir>/report/` when a sweep ends, and rebuilt any time with

    python -m genlab.sweep.report <sweep dir> [--metrics val/elbo,val/kl]

- `jobs.csv`, `report.md`: one row per job: its swept values, status, every final metric (the
  job's `metrics.json`), the error of a job that failed, and its folder
- `panel_samples.png`, `panel_reconstructions.png`: the jobs' `samples.png` /
  `reconstructions.png` laid out on the swept axes (rows: first swept key, columns: second; one
  panel per value of any further keys), e.g. seed 002's beta x k figures from one command
- `metrics.png`: each headline metric against the first swept key, one line per value of the
  others
- for a search (Optuna), whose values form no grid: the panels are a gallery of the trials and
  the plots show each metric against each swept key, one point per trial

Everything is read from files the jobs wrote (status.json, metrics.json, .hydra/overrides.yaml,
the sweep's sweep.json), so it works for any launcher and for sweeps still running.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

from genlab.sweep.job import STATUS_FILE
from genlab.sweep.keys import job_values, label, read_sweep_file, short_names

REPORT_DIR = "report"
IMAGES = ("samples", "reconstructions")
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
MAX_PLOTS = 6


@dataclass
class Job:
    num: int
    dir: Path | None
    status: str
    swept: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
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


# -- reading a sweep dir -----------------------------------------------------------------------
def _load_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _job_overrides(job_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        return [str(o) for o in OmegaConf.load(path)]
    except Exception:
        return []


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
                metrics={k: float(v) for k, v in metrics.items() if _is_number(v)},
                error=error,
                error_type=status.get("error_type", ""),
                started=status.get("started", ""),
                ended=status.get("ended", ""),
                slurm_job_id=str(status.get("slurm_job_id", "")),
            )
        )
    return jobs


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _as_float(text: str) -> float | None:
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
    if values and all(_as_float(v) is not None for v in values):
        values.sort(key=lambda v: _as_float(v))
    return values


def headline_metrics(jobs: list[Job], wanted: list[str] | None = None) -> list[str]:
    logged = {m for job in jobs for m in job.metrics}
    if wanted:
        return [m for m in wanted if m in logged] or list(wanted)
    return [m for m in HEADLINE if m in logged]


# -- writing -----------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}"


def _write_csv(path: Path, jobs: list[Job], keys: list[str]) -> None:
    metric_names = sorted({m for job in jobs for m in job.metrics})
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


def _write_markdown(
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
    path.write_text("\n".join(lines) + "\n")


def _cell_text(job: Job | None, image: str) -> str:
    if job is None:
        return "no job"
    if job.status != "completed":
        reason = textwrap.fill(job.error_line, 28)[:200] if job.error_line else ""
        return f"{job.status}\n{reason}"
    return f"no {image}.png"


def _draw_panel(path: Path, grid, row_labels, col_labels, image: str, title: str) -> None:
    """Draw `grid` (rows of (job or None, cell title or None)) with each job's `<image>.png`."""
    import matplotlib.image as mpimg
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pictures = {}
    for i, row in enumerate(grid):
        for j, (job, _) in enumerate(row):
            if job is not None and job.dir is not None and job.status == "completed":
                file = job.dir / f"{image}.png"
                if file.is_file():
                    pictures[i, j] = mpimg.imread(file)
    # A facet whose jobs all failed still gets its panel: the failures are the news.
    height = max((p.shape[0] for p in pictures.values()), default=240)
    width = max((p.shape[1] for p in pictures.values()), default=240)
    rows, cols = len(grid), max(len(row) for row in grid)
    dpi = 100
    cell_w, cell_h = max(width / dpi, 1.6), max(height / dpi, 1.6)
    fig = Figure(figsize=(cell_w * cols + 1.0, (cell_h + 0.3) * rows + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(grid[i]):
                ax.set_visible(False)
                continue
            job, cell_title = grid[i][j]
            picture = pictures.get((i, j))
            if picture is not None:
                # PNGs read as floats in [0, 1]: keep that scale (no per-image stretching).
                ax.imshow(picture, interpolation="nearest", cmap="gray", vmin=0, vmax=1)
            else:
                for side in ax.spines.values():
                    side.set_color("#cc3333")
                ax.text(
                    0.5,
                    0.5,
                    _cell_text(job, image),
                    ha="center",
                    va="center",
                    fontsize=8,
                    transform=ax.transAxes,
                )
            if cell_title:
                ax.set_title(cell_title, fontsize=8)
            elif i == 0 and col_labels:
                ax.set_title(col_labels[j], fontsize=10)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)


def _find(jobs: list[Job], wanted: dict[str, str]) -> Job | None:
    for job in jobs:
        if all(job.swept.get(k) == v for k, v in wanted.items()):
            return job
    return None


def _write_panels(out: Path, jobs: list[Job], keys: list[str], grid_sweep: bool) -> list[Path]:
    """Grid sweeps: rows = first swept key, columns = second (one key: a single row), one panel
    per value of any further keys. Searches (Optuna) and sweeps of nothing: a gallery of jobs."""
    written = []
    names = short_names(keys)
    for image in IMAGES:
        if not any(
            job.dir is not None and (job.dir / f"{image}.png").is_file()
            for job in jobs
            if job.status == "completed"
        ):
            continue  # no job made this picture (an AE has no samples; save_images=false)
        if not grid_sweep or not keys:
            per_row = min(4, max(1, len(jobs)))
            cells = [(job, textwrap.fill(f"#{job.num} {_short(job.label)}", 34)) for job in jobs]
            grid = [cells[i : i + per_row] for i in range(0, len(cells), per_row)]
            _draw_panel(out / f"panel_{image}.png", grid, None, None, image, image)
            written.append(out / f"panel_{image}.png")
            continue
        row_key = keys[0] if len(keys) > 1 else None
        col_key = keys[1] if len(keys) > 1 else keys[0]
        rest = keys[2:]
        rows = axis_values(jobs, row_key) if row_key else [None]
        cols = axis_values(jobs, col_key)
        for facet in product(*[axis_values(jobs, k) for k in rest]) if rest else [()]:
            fixed = dict(zip(rest, facet, strict=True))
            grid = [
                [
                    (_find(jobs, {**fixed, **({row_key: r} if row_key else {}), col_key: c}), None)
                    for c in cols
                ]
                for r in rows
            ]
            suffix = label(fixed)
            path = out / (f"panel_{image}" + (f"__{suffix}" if suffix else "") + ".png")
            title = image + (f" ({suffix.replace(',', ', ')})" if suffix else "")
            _draw_panel(
                path,
                grid,
                [f"{names[row_key]}={r}" for r in rows] if row_key else None,
                [f"{names[col_key]}={c}" for c in cols],
                image,
                title,
            )
            written.append(path)
    return written


def _short(text: str) -> str:
    """Long numbers (Optuna's samples) shortened for titles: beta=0.1871450068 -> beta=0.1871."""
    parts = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        number = _as_float(value)
        if number is not None and len(value) > 8:
            value = f"{number:.4g}"
        parts.append(f"{key}={value}" if sep else part)
    return ",".join(parts)


def _write_metric_plot(
    path: Path, jobs: list[Job], keys: list[str], metrics: list[str], grid_sweep: bool
) -> bool:
    """Grid sweeps: each metric against the first swept key, one line per value of the others.
    Searches: each metric against each swept key, one point per job."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = [job for job in jobs if job.status == "completed" and job.metrics]
    metrics = [m for m in metrics if any(m in job.metrics for job in done)][:MAX_PLOTS]
    if not keys or not done or not metrics:
        return False
    names = short_names(keys)
    if grid_sweep:
        panels = [(m, keys[0]) for m in metrics]
    else:
        panels = [(m, k) for m in metrics[:3] for k in keys[:3]]
    cols = min(3, len(panels)) if grid_sweep else min(3, len(keys))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.3 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for index, (metric, x_key) in enumerate(panels):
        ax = axes[index // cols][index % cols]
        x_values = axis_values(done, x_key)
        numeric = all(_as_float(v) is not None for v in x_values)
        position = (lambda v: _as_float(v)) if numeric else x_values.index
        others = [k for k in keys if k != x_key] if grid_sweep else []
        groups = list(product(*[axis_values(done, k) for k in others])) if others else [()]
        for group in groups:
            points = sorted(
                (position(job.swept[x_key]), job.metrics[metric])
                for job in done
                if metric in job.metrics
                and x_key in job.swept
                and all(job.swept.get(k) == v for k, v in zip(others, group, strict=True))
            )
            if not points:
                continue
            text = ", ".join(f"{names[k]}={v}" for k, v in zip(others, group, strict=True)) or None
            style = {"marker": "o"} if grid_sweep else {"marker": "o", "linestyle": "none"}
            ax.plot([p[0] for p in points], [p[1] for p in points], label=text, **style)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel(names[x_key])
        floats = [_as_float(v) for v in x_values] if numeric else []
        if floats and min(floats) > 0 and max(floats) / min(floats) >= 100:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(x_values)), x_values)
        if others and index == 0:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for index in range(len(panels), rows * cols):
        axes[index // cols][index % cols].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    return True


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
    _write_csv(files[0], jobs, keys)
    # Hydra's grid sweeper runs every combination; a search (Optuna) samples values, which
    # have no grid to lay out.
    grid_sweep = "BasicSweeper" in (info.get("sweeper") or "BasicSweeper")
    images = _write_panels(out, jobs, keys, grid_sweep)
    if _write_metric_plot(out / "metrics.png", jobs, keys, shown, grid_sweep):
        images.append(out / "metrics.png")
    _write_markdown(out / "report.md", sweep_dir, jobs, keys, shown, images)
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

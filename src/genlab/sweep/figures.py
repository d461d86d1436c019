"""The report's figures, drawn with matplotlib's object API (no global pyplot state, safe in
a sweep's process):

- `panel_samples.png`, `panel_reconstructions.png`: the jobs' `samples.png` /
  `reconstructions.png` laid out on the swept axes (rows: first swept key, columns: second; one
  panel per value of any further keys); for a search (Optuna), a gallery of the trials
- `metrics.png`: each headline metric against the first swept key, one line per value of the
  others; for a search, each metric against each swept key, one point per trial
"""

from __future__ import annotations

import math
import textwrap
from itertools import product
from pathlib import Path

from genlab.atomic import replace_atomically
from genlab.sweep.keys import label, short_names
from genlab.sweep.results import Job, as_float, axis_values

IMAGES = ("samples", "reconstructions")
MAX_PLOTS = 6


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
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


def _find(jobs: list[Job], wanted: dict[str, str]) -> Job | None:
    for job in jobs:
        if all(job.swept.get(k) == v for k, v in wanted.items()):
            return job
    return None


def write_panels(out: Path, jobs: list[Job], keys: list[str], grid_sweep: bool) -> list[Path]:
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
        number = as_float(value)
        if number is not None and len(value) > 8:
            value = f"{number:.4g}"
        parts.append(f"{key}={value}" if sep else part)
    return ",".join(parts)


def write_metric_plot(
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
        numeric = all(as_float(v) is not None for v in x_values)
        position = (lambda v: as_float(v)) if numeric else x_values.index
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
        floats = [as_float(v) for v in x_values] if numeric else []
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
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    return True

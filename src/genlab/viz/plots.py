"""Plots that are not image grids: the latent scatter and score histograms.

Built on matplotlib's object API (Figure + the Agg canvas), never pyplot: no global figure state,
no display needed, and the same inputs give the same PNG bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _figure(width: float = 6.4, height: float = 5.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def latent_scatter(
    points: np.ndarray,
    labels: np.ndarray,
    *,
    axis_labels: tuple[str, str],
    title: str,
    class_names: Sequence[str] | None = None,
):
    """Scatter of 2-d points coloured by class: a legend for up to 10 classes, a colour bar
    beyond that (a legend of 100 entries says nothing)."""
    fig = _figure()
    ax = fig.add_subplot()
    classes = np.unique(labels)
    if len(classes) <= 10:
        from matplotlib import colormaps

        cmap = colormaps["tab10"]
        for c in classes:
            mask = labels == c
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(*points[mask].T, s=6, alpha=0.7, color=cmap(int(c) % 10), label=name)
        ax.legend(title="class", markerscale=3, fontsize="small", loc="best")
    else:
        art = ax.scatter(*points.T, s=6, alpha=0.7, c=labels, cmap="viridis")
        fig.colorbar(art, ax=ax, label="class")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    return fig


def score_histograms(scores: dict[str, np.ndarray], *, xlabel: str, title: str, bins: int = 50):
    """Overlaid density histograms of one score for several datasets, on shared bins so the
    bars compare."""
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    everything = np.concatenate(list(scores.values()))
    edges = np.histogram_bin_edges(everything, bins=bins)
    for name, values in scores.items():
        ax.hist(values, bins=edges, density=True, alpha=0.55, label=f"{name} (n={len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write the figure as a PNG at exactly `path` (callers choose temp names and rename)."""
    path = Path(path)
    # No Software/date metadata: a PNG then depends on nothing but the plotted data.
    fig.savefig(path, format="png", metadata={"Software": None})
    return path

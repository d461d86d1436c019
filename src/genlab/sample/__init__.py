"""Turn a trained run into pictures: `run(cfg)` loads a run or checkpoint, does one task
(samples, reconstructions, interpolate, manifold, traverse, latent_scatter, classes, anomaly,
denoise) and writes PNGs without overwriting anything.

The `sample.py` script at the top of the repo is a thin Hydra wrapper around `run`. Modules:
`options` (defaults and checks of conf/sample.yaml), `loader` (finding and loading a run),
`writer` (atomic, never-overwriting output files), `job` (what every task shares), one module
per task family (`latent`, `anomaly`, `diffusion`) and `tasks` (the table of tasks and what
each needs). `load_run` is the loader any sampling code can share.
Importing this package is cheap: torch is imported inside functions, so bad input fails fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from genlab.sample.anomaly import rank_auroc
from genlab.sample.job import Job
from genlab.sample.loader import LoadedRun, _init_kwargs, load_model, load_run
from genlab.sample.options import check_options, options, pick_device
from genlab.sample.tasks import TASKS, _check_supported, tasks_for
from genlab.sample.writer import write_outputs

__all__ = [
    "TASKS",
    "Job",
    "LoadedRun",
    "_init_kwargs",
    "check_options",
    "load_model",
    "load_run",
    "options",
    "pick_device",
    "rank_auroc",
    "run",
    "tasks_for",
    "write_outputs",
]


def run(cfg: DictConfig | Mapping) -> list[Path]:
    """Do `cfg.task` for the run at `cfg.run`; return the files written."""
    cfg = options(cfg)
    check_options(cfg, TASKS)
    loaded = load_run(str(cfg.run), cfg.device)
    _check_supported(cfg.task, loaded, cfg)
    task = TASKS[cfg.task]
    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else loaded.home / "samples"
    n = None if task.default_n is None else (cfg.n or task.default_n)
    return task.handlers[loaded.name](Job(run=loaded, opts=cfg, n=n, out_dir=out_dir))

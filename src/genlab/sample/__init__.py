"""Turn a trained run into pictures: `run(cfg)` loads a run or checkpoint, does one task
(samples, reconstructions, interpolate, manifold, traverse, latent_scatter, classes, anomaly,
denoise) and writes PNGs without overwriting anything.

The `sample.py` script at the top of the repo is a thin Hydra wrapper around `run`. The modules,
each importing only those listed before it (and genlab.runs, which loads the run):
  options    conf/sample.yaml's defaults, the checks of each option, the device
  writer     atomic output files that never replace an earlier run's
  job        what every task shares: seeded generator, batching, test images, coding, grids
  latent     the tasks of models with an encoder (AE, VAE, CVAE)
  anomaly    task=anomaly: reconstruction error as an out-of-distribution score, AUROC
  diffusion  the tasks of diffusion models (DDPM)
  tasks      the table: what each task needs of a model's capabilities, its refusals
  dispatch   `run`: options -> loaded run -> refusals -> the handler of the model's family
  help       the task list of `--help` and of the README, generated from the table
Importing this package is cheap: torch is imported inside functions, so bad input fails fast.
"""

from __future__ import annotations

from genlab.sample.anomaly import rank_auroc
from genlab.sample.dispatch import check_supported, run, tasks_for
from genlab.sample.job import Job
from genlab.sample.options import check_options, options, pick_device
from genlab.sample.tasks import TASKS, Need, Task
from genlab.sample.writer import write_outputs

__all__ = [
    "TASKS",
    "Job",
    "Need",
    "Task",
    "check_options",
    "check_supported",
    "options",
    "pick_device",
    "rank_auroc",
    "run",
    "tasks_for",
    "write_outputs",
]

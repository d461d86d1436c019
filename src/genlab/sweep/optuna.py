"""Optuna searches that survive failed trials: `hydra/sweeper=genlab_optuna` (sweep=optuna_vae).

A genlab sweep job that fails (diverged loss, bad combination, killed process) returns NaN
(genlab.sweep.job, the launchers). hydra-optuna-sweeper 1.3.0 tells Optuna that NaN as the
trial's value, Optuna refuses it, and the plugin's own fallback then fails too, so the first
failed trial ends the search with a traceback (facebookresearch/hydra#2237). `OptunaSearch` runs
the plugin's sweeper unchanged, with its launcher wrapped: a job without a finite value comes
back as a `FailedTrial`, which the plugin records as an Optuna trial in state FAIL (no value;
TPE leaves it out of its model), and the next trials run. Every trial runs: the job's
status.json and the sweep report say why it failed, and the sweep exits 1 at the end.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

from genlab.sweep.status import read_status

log = logging.getLogger("genlab")

RESULTS_FILE = "optimization_results.yaml"


class FailedTrial:
    """The return value of a failed job as the plugin sees it: `float()` of it raises, so the
    plugin tells Optuna the trial failed instead of passing NaN on."""

    def __init__(self, reason: str):
        self.reason = reason

    def __float__(self) -> float:
        raise ValueError(self.reason)

    def __str__(self) -> str:
        return self.reason


def failure(ret: JobReturn) -> str | None:
    """Why the job of `ret` gives Optuna no value, or None when it returned a finite number."""
    if ret.status == JobStatus.FAILED:
        err = ret._return_value  # what the task raised (Hydra keeps it to re-raise)
        return f"{type(err).__name__}: {err}"
    value = ret.return_value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return None
    record = read_status(job_folder(ret)) if job_folder(ret) else None
    error = (record or {}).get("error")
    if error:
        return str(error).splitlines()[0]
    return f"the job returned {value!r}, not a finite value of optimize_metric"


def job_folder(ret: JobReturn) -> str | None:
    """The job's output folder (Hydra's own launcher gives the process's cwd as working_dir)."""
    folder = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
    return str(folder) if folder else ret.working_dir


class _FailedTrialsLauncher:
    """The sweeper's launcher, with each job that has no finite value returned as FailedTrial."""

    def __init__(self, launcher):
        self.launcher = launcher
        self.completed = 0
        self.failed = 0

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        returns = self.launcher.launch(job_overrides, initial_job_idx)
        for num, ret in enumerate(returns, start=initial_job_idx):
            reason = failure(ret)
            if reason is None:
                self.completed += 1
                continue
            self.failed += 1
            where = f" ({job_folder(ret)})" if job_folder(ret) else ""
            log.warning(
                "Trial %d failed%s: %s. Optuna records it as failed; the search goes on.",
                num,
                where,
                reason,
            )
            ret.status = JobStatus.COMPLETED
            ret.return_value = FailedTrial(f"trial {num} failed: {reason}")
        return returns

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)


class OptunaSearch(Sweeper):
    """hydra-optuna-sweeper's OptunaSweeper (same settings), failed trials recorded as failed.

    `max_failure_rate` is accepted for the plugin's schema and not used: every trial runs."""

    def __init__(self, **settings: Any):
        from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

        settings["max_failure_rate"] = 1.0  # the plugin would log each failed batch as an error
        self.optuna = OptunaSweeper(**settings)
        self.launcher: _FailedTrialsLauncher | None = None
        self.sweep_dir = ""

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.optuna.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        impl = self.optuna.sweeper  # the plugin's OptunaSweeperImpl: it calls impl.launcher
        self.launcher = impl.launcher = _FailedTrialsLauncher(impl.launcher)
        self.sweep_dir = str(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> None:
        assert self.launcher is not None
        try:
            self.optuna.sweep(arguments)
        except ValueError as err:
            # Optuna's best_trial when no trial of the study completed ("No trials are
            # completed yet", "Record does not exist" from an RDB storage): the results file
            # says so instead of the sweep ending in a traceback.
            if self.launcher.completed or not self.launcher.failed:
                raise
            log.error("Every trial failed (%d): no best value (%s).", self.launcher.failed, err)
            results = {"name": "optuna", "best_params": None, "best_value": None}
            results["failed_trials"] = self.launcher.failed
            OmegaConf.save(OmegaConf.create(results), Path(self.sweep_dir) / RESULTS_FILE)

"""Hydra launchers for genlab sweeps (configs in conf/hydra/launcher/).

`SlurmLauncher` is hydra-submitit-launcher's Slurm launcher with one change: the sweep survives
jobs that never return a result. Hydra's version asks every job for its result in turn and stops
at the first one that was cancelled (`scancel`), timed out for good or lost its node, so the
jobs after it are neither waited for nor reported. Here each such job gets a status.json saying
what Slurm reported (e.g. "CANCELLED"), counts as a job that did not complete (exit code 1 at the
end), and the other jobs carry on.

Importing this module (which submitit does in every job to unpickle the launcher) registers
genlab's resolvers before the job composes its config.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as _SubmititSlurmLauncher,
)
from omegaconf import open_dict

from genlab.composition import register_resolvers
from genlab.sweep.keys import job_values, label, read_sweep_file
from genlab.sweep.status import JobInfo, read_status, write_status

# A job's process (submitit) imports this module first, when it unpickles the launcher,
# and then Hydra resolves the job's folder, ${genlab_job_subdir:}.
register_resolvers()

log = logging.getLogger("genlab")


class SlurmLauncher(_SubmititSlurmLauncher):
    def launch(self, job_overrides, initial_job_idx: int):
        import submitit

        assert self.config is not None
        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout", 0),
        )
        # Hydra's submitit config mixes executor-wide keys (timeout_min, nodes, ...) with
        # Slurm-only ones, which submitit expects prefixed with "slurm_".
        shared = {
            "timeout_min",
            "cpus_per_task",
            "gpus_per_node",
            "tasks_per_node",
            "mem_gb",
            "nodes",
            "name",
            "stderr_to_stdout",
        }
        executor.update_parameters(
            **{(k if k in shared else f"slurm_{k}"): v for k, v in params.items()}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Slurm sweep of %d jobs in %s", len(job_overrides), sweep_dir)
        calls = []
        for offset, overrides in enumerate(job_overrides):
            num = initial_job_idx + offset
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            calls.append(
                (
                    list(overrides),
                    "hydra.sweep.dir",
                    num,
                    f"job_id_for_{num}",
                    Singleton.get_state(),
                )
            )
        jobs = executor.map_array(self, *zip(*calls, strict=True))
        for job, call in zip(jobs, calls, strict=True):
            log.info("\t#%d : Slurm job %s", call[2], job.job_id)
        return [self._result(job, call) for job, call in zip(jobs, calls, strict=True)]

    def _result(self, job, call) -> JobReturn:
        overrides, _, num, _, _ = call
        try:
            return job.results()[0]
        except Exception as err:  # cancelled, failed outside the job's own handling, node lost
            state = _slurm_state(job)
            message = _first_lines(str(err)) or type(err).__name__
            log.error("Job %d (Slurm %s) ended as %s: %s", num, job.job_id, state, message)
            job_dir = self._job_dir(overrides, num)
            self._record(job_dir, overrides, num, state, message, job.job_id)
            # The job is reported through its status.json; to the sweeper it is a job without a
            # value (Hydra's grid sweeper ignores it, Optuna counts a failed trial).
            ret = JobReturn(overrides=overrides, working_dir=str(job_dir) if job_dir else None)
            ret.status = JobStatus.COMPLETED
            ret.return_value = math.nan
            return ret

    def _job_dir(self, overrides: list[str], num: int) -> Path | None:
        """Where the job's folder is (or would have been): composed exactly as the job does."""
        try:
            assert self.hydra_context is not None and self.config is not None
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(cfg.hydra.job):
                cfg.hydra.job.num = num
            return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        except Exception as err:
            log.warning("Cannot place the record of job %d: %s", num, err)
            return None

    def _record(self, job_dir, overrides, num, state, message, slurm_id) -> None:
        if job_dir is None:
            return
        previous = read_status(job_dir) or {}
        info = read_sweep_file(self.config.hydra.sweep.dir) or {}
        swept = job_values(overrides, info.get("keys") or [])
        job = JobInfo(
            num=num,
            output_dir=str(job_dir),
            sweep_dir=str(job_dir.parent),
            overrides=list(overrides),
            swept=swept,
            label=label(swept),
        )
        detail = previous.get("error")
        write_status(
            job_dir,
            job,
            "cancelled" if state.startswith("CANCELLED") else "failed",
            error=f"Slurm job {slurm_id}: {state}. {message}"
            + (f"\nThe job itself recorded: {detail}" if detail else ""),
            error_type=f"Slurm{state.split()[0].title()}" if state else "SlurmJobError",
            slurm_job_id=str(slurm_id),
            slurm_state=state,
        )


def _slurm_state(job) -> str:
    try:
        return str(job.state)
    except Exception:
        return "UNKNOWN"


def _first_lines(text: str, n: int = 6) -> str:
    # submitit appends the job's whole stderr; the job's own record (status.json) and its
    # train.log say more, so keep only submitit's verdict.
    text = text.split("Error stream produced", 1)[0]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:n])

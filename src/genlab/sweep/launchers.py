"""Hydra launchers for genlab sweeps (configs in conf/hydra/launcher/).

`LocalParallelLauncher` (`hydra/launcher=local_parallel`) runs n_jobs jobs at once on this
machine, each as a process tree of its own (`python train.py <overrides>
hydra.run.dir=<job dir>`, as a DDP job of any sweep runs), waited for by a thread of the sweep
process. Hydra's joblib launcher shares one pool of worker processes among the jobs: when one
worker dies (kill -9, the kernel's OOM killer), the pool is broken, the healthy jobs are
killed with it and their status.json files keep saying `running`. Here a job that dies is
recorded as failed (with the signal that killed it) and the others go on.

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
import os
import shutil
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from omegaconf import open_dict

from genlab.composition import register_resolvers
from genlab.sweep.keys import SWEEP_FILE, job_values, label, read_sweep_file
from genlab.sweep.own_process import run_in_own_process, signal_group
from genlab.sweep.status import JobInfo, read_status, write_status

# A job's process (submitit) imports this module first, when it unpickles the launcher,
# and then Hydra resolves the job's folder, ${genlab_job_subdir:}.
register_resolvers()

log = logging.getLogger("genlab")

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as _SubmititSlurmLauncher,
    )
except ImportError:  # no [slurm] extra: the local launcher still works

    class _SubmititSlurmLauncher(Launcher):  # type: ignore[no-redef]
        def __init__(self, **params) -> None:
            from genlab.extras import require

            require("slurm", "hydra/launcher=slurm")

        def setup(self, **kwargs) -> None:
            raise NotImplementedError

        def launch(self, job_overrides, initial_job_idx):
            raise NotImplementedError


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
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        try:
            jobs = executor.map_array(self, *zip(*calls, strict=True))
        except (FailedJobError, FailedSubmissionError, OSError) as err:  # sbatch refused
            from genlab.exits import fail

            reason = " ".join(str(err).split())[:500] or type(err).__name__
            # A sweep dir holding only this attempt's records goes: nothing ran.
            if {p.name for p in sweep_dir.iterdir()} <= {".submitit", "multirun.yaml", SWEEP_FILE}:
                shutil.rmtree(sweep_dir, ignore_errors=True)
            fail(
                f"hydra/launcher=slurm: Slurm did not take the sweep's jobs ({reason}); none was "
                "started. Check that the cluster answers (`sinfo`, `scontrol ping`), then run the "
                "sweep again."
            )
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
        try:
            return job_dir(self.hydra_context, self.config, overrides, num)
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


def job_dir(hydra_context, config, overrides: list[str], num: int) -> Path:
    """Where job `num` of the sweep writes (or would have written): composed as the job does."""
    assert hydra_context is not None and config is not None
    cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = num
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


class LocalParallelLauncher(Launcher):
    """n_jobs jobs at once on this machine, each in a process tree of its own (module doc)."""

    def __init__(self, n_jobs: int = 2, threads_per_job: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.n_jobs = cores if n_jobs == -1 else max(1, int(n_jobs))
        # Jobs at once share the cores: torch's and OpenMP's threads per job, so that they do
        # not spin against each other (on 2 cores, two 2-thread jobs run far below half speed).
        self.threads_per_job = threads_per_job or max(1, cores // self.n_jobs)
        self.config = self.hydra_context = self.task_function = None
        self._running: set = set()
        self._lock = threading.Lock()

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "Running %d jobs, %d at once (%d threads each), in %s",
            len(job_overrides),
            self.n_jobs,
            self.threads_per_job,
            sweep_dir,
        )
        jobs = [
            self._job(list(overrides), initial_job_idx + i)
            for i, overrides in enumerate(job_overrides)
        ]
        for job in jobs:
            log.info("\t#%d : %s", job.num, " ".join(filter_overrides(job.overrides)))
        received: list[int] = []

        def forward(signum, frame):  # Ctrl-C / SIGTERM: every running job checkpoints, stops
            received.append(signum)
            with self._lock:
                for proc in list(self._running):
                    signal_group(proc.pid, signum)

        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with ThreadPoolExecutor(max_workers=self.n_jobs) as pool:
                values = list(pool.map(self._run, jobs))
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        if received:
            raise SystemExit(128 + received[-1])
        returns = []
        for job, value in zip(jobs, values, strict=True):
            ret = JobReturn(overrides=job.overrides, working_dir=job.output_dir)
            ret.status = JobStatus.COMPLETED  # a failed job speaks through its status.json
            ret.return_value = value
            returns.append(ret)
        return returns

    def _job(self, overrides: list[str], num: int) -> JobInfo:
        folder = job_dir(self.hydra_context, self.config, overrides, num)
        info = read_sweep_file(self.config.hydra.sweep.dir) or {}
        swept = job_values(overrides, info.get("keys") or [])
        return JobInfo(
            num=num,
            output_dir=str(folder),
            sweep_dir=str(folder.parent),
            overrides=overrides,
            swept=swept,
            label=label(swept),
            sweep_name=info.get("name", ""),
            group=info.get("group", ""),
            sweeper=str(self.config.hydra.sweeper.get("_target_", "")),
            cwd=os.getcwd(),
        )

    def _run(self, job: JobInfo) -> float | None:
        threads = str(self.threads_per_job)
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

        def started(proc) -> None:
            with self._lock:
                self._running.add(proc)

        try:
            value = run_in_own_process(
                None,
                job,
                env=env,
                started=started,
                searchpath=self.config.hydra.searchpath,
                config_name=self.config.hydra.job.config_name,
            )
        except SystemExit:
            return math.nan  # the job was interrupted; launch() stops the sweep after all end
        finally:
            with self._lock:
                self._running = {p for p in self._running if p.poll() is None}
        if value is not None and math.isnan(value):
            log.error("Job %d failed: see %s", job.num, Path(job.output_dir) / "status.json")
        return value


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

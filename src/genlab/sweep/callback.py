"""The Hydra callback that frames a sweep (configured under `hydra.callbacks` in conf/train.yaml).

At the start of a multirun it writes `<sweep dir>/sweep.json`: the sweep's name, its W&B group,
the swept keys and the command. Jobs read it to name their folders and runs. When the last job
has returned it writes the report (genlab.sweep.report) and remembers how many jobs did not
complete; `train.py` turns that into its exit code, because a failed job only records its
failure and returns (one bad job must not stop the others).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from genlab.composition import register_resolvers
from genlab.sweep.keys import SWEEP_FILE, read_sweep_file, sweeper_param_overrides, swept_keys

# A process that unpickles the sweep's callback (a Slurm job, through submitit) imports this
# module first, and then Hydra resolves the job's folder, ${genlab_job_subdir:}.
register_resolvers()

log = logging.getLogger("genlab")

# Exit code of `python train.py -m ...` when at least one job did not complete.
EXIT_JOBS_FAILED = 1


class _SweepState:
    """What the current process knows about the sweep it runs (one at a time)."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.name = ""  # sweep.json's name: the opening and closing lines say it
        self.report_options: dict[str, Any] = {}
        self.reported = False
        self.incomplete = 0

    def reset(self) -> None:
        self.__init__()


STATE = _SweepState()


def describe_sweep(config: DictConfig) -> dict[str, Any]:
    """The sweep.json record of a multirun, from its (master) config."""
    from genlab.secrets import redact

    hydra = config.hydra
    params = sweeper_param_overrides(OmegaConf.select(hydra, "sweeper.params"))
    task = list(OmegaConf.to_container(hydra.overrides.task, resolve=False))
    name = config.get("sweep_name") or config.get("name") or hydra.job.name
    started = time.time()
    return {
        "name": str(name),
        # One W&B group per execution of a sweep: re-running a sweep does not mix its runs
        # with the earlier ones.
        "group": f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}",
        "keys": swept_keys(params + task),
        "dir": str(Path(hydra.sweep.dir).resolve()),
        "sweeper": str(OmegaConf.select(hydra, "sweeper._target_", default="")),
        "launcher": str(OmegaConf.select(hydra, "launcher._target_", default="")),
        "sweeper_params": params,
        "overrides": redact(task),
        "command": redact(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
    }


def _grid(info: dict[str, Any]) -> tuple:
    """What makes a sweep the same sweep: its swept keys with their values and its search
    space. Other overrides may change between an interrupted run and its resumption (the
    launcher, a callback, resume_changes=allow)."""
    keys = set(info.get("keys") or [])
    swept = [o for o in info.get("overrides") or [] if o.lstrip("+~").split("=", 1)[0] in keys]
    return sorted(swept), info.get("sweeper_params")


class SweepCallback(Callback):
    """Writes sweep.json when a multirun starts and the report when it ends.

    report:  write the report at the end (it can be rebuilt any time with
             `python -m genlab.sweep.report <sweep dir>`)
    metrics: metrics shown in the Markdown table and plotted against the swept values
             (null: the model's headline metrics that the jobs logged)
    """

    def __init__(self, report: bool = True, metrics: list[str] | None = None) -> None:
        self.report = report
        self.metrics = list(metrics) if metrics else None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from genlab import GenlabError
        from genlab.atomic import write_text_atomic
        from genlab.exits import fail
        from genlab.rundir import check_run_dir

        STATE.reset()
        # Optuna's storages import alembic, which logs one INFO line per plugin it sets up.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        info = describe_sweep(config)
        sweep_dir = Path(info["dir"])
        try:  # before Hydra opens a job's train.log or writes its .hydra/
            check_run_dir(sweep_dir, new_run=False)
        except GenlabError as err:
            fail(str(err))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        earlier = read_sweep_file(sweep_dir)
        if earlier and _grid(earlier) != _grid(info):
            fail(
                f"hydra.sweep.dir={sweep_dir} holds another sweep ({earlier.get('command')!r}): "
                "running this one there would mix their jobs and replace its records, so nothing "
                "was written. Give this sweep a dir of its own (hydra.sweep.dir=<a new dir>, or "
                "none for a new dated one); the same command again resumes the sweep there."
            )
        if earlier and earlier.get("name") == info["name"] and earlier.get("group"):
            # The same sweep run again in its folder (its jobs resume): same W&B group.
            info["group"], info["started"] = earlier["group"], earlier.get("started", "")
            info["resumed"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_text_atomic(sweep_dir / SWEEP_FILE, json.dumps(info, indent=2))
        STATE.sweep_dir, STATE.name = sweep_dir, info["name"]
        STATE.report_options = {"metrics": self.metrics, "enabled": self.report}
        swept = ", ".join(info["keys"]) or "nothing (one job)"
        log.info("Sweep '%s' in %s, sweeping %s", info["name"], sweep_dir, swept)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish_sweep()


def finish_sweep(interrupted: bool = False) -> None:
    """Write the report of the sweep this process ran (once), and count unfinished jobs.

    Called at the end of a multirun, and by train.py when a sweep stops early (Ctrl-C, a
    sweeper error) so that the jobs done so far are still reported."""
    if STATE.sweep_dir is None or STATE.reported:
        return
    STATE.reported = True
    from genlab.sweep.report import write_report
    from genlab.sweep.results import collect_jobs

    options = STATE.report_options
    try:
        if options.get("enabled", True):
            report = write_report(STATE.sweep_dir, metrics=options.get("metrics"))
            jobs = report.jobs
            log.info("Sweep report: %s", report.markdown_path)
        else:
            jobs = collect_jobs(STATE.sweep_dir, finished=True)
    except Exception as err:  # a report bug must not hide the jobs' outcome
        log.error("Could not write the sweep report: %s: %s", type(err).__name__, err)
        jobs = collect_jobs(STATE.sweep_dir, finished=True)
    failed = [job for job in jobs if job.status != "completed"]
    STATE.incomplete = len(failed)
    done = len(jobs) - len(failed)
    summary = f"{done} of {len(jobs)} jobs completed"
    if interrupted:
        summary += " (sweep interrupted)"
    name = STATE.name or STATE.sweep_dir.name
    (log.warning if failed else log.info)("Sweep '%s': %s.", name, summary)
    for job in failed:
        log.warning("  job %s [%s] %s: %s", job.num, job.label or "-", job.status, job.error_line)


def sweep_exit_code() -> int:
    """0 unless this process ran a sweep in which some job did not complete."""
    return EXIT_JOBS_FAILED if STATE.incomplete else 0

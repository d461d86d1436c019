"""One job of a sweep: who it is (`current_job`), what it takes from its sweep (`prepare`), and
the failure policy (`run_sweep_job`, called by genlab.cli.task_wrapper for a sweep's job).

A job never raises out of `train.py`'s main: a failure (diverged loss, bad combination, a bug)
is written to `status.json` in the job's folder (genlab.sweep.status) and the job returns, so
the sweep goes on; the exit code is decided when the sweep ends (genlab.sweep.callback).
Interruptions (Ctrl-C, SIGTERM) are the exception: they write a checkpoint, are recorded, and
stop the sweep. A DDP job runs in a process tree of its own (genlab.sweep.own_process).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from genlab.rundir import ENV_JOB, in_sweep_job
from genlab.sweep.keys import job_values, label, read_sweep_file, short_names
from genlab.sweep.own_process import needs_own_process, run_in_own_process
from genlab.sweep.status import JobInfo, error_fields, write_status

log = logging.getLogger("genlab")


def current_job() -> JobInfo | None:
    """The sweep job this process runs, or None for a plain run."""
    if not in_sweep_job():
        return None
    if os.environ.get(ENV_JOB):
        return JobInfo(**json.loads(os.environ[ENV_JOB]))
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    overrides = list(OmegaConf.to_container(hc.overrides.task, resolve=False))
    info = read_sweep_file(hc.sweep.dir) or {}
    swept = job_values(overrides, info.get("keys") or [])
    return JobInfo(
        num=int(hc.job.num),
        output_dir=str(hc.runtime.output_dir),
        sweep_dir=str(hc.sweep.dir),
        overrides=overrides,
        swept=swept,
        label=label(swept),
        sweep_name=info.get("name", ""),
        group=info.get("group", ""),
        sweeper=str(OmegaConf.select(hc, "sweeper._target_", default="")),
        cwd=str(hc.runtime.cwd),
    )


def global_rank() -> int:
    """This process's rank before any process group exists (Lightning/torchrun/Slurm env)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def prepare(cfg: DictConfig, job: JobInfo) -> None:
    """Settings a job takes from its sweep: W&B run name and group, a record of the sweep in
    the run config, and resuming from its own checkpoints when it is run again. Every key set
    here is in the YAML already (`sweep_job: null` in conf/train.yaml), so the config stays in
    struct mode: a typo here fails instead of adding a key."""
    cfg.sweep_job = {
        "sweep": job.sweep_name,
        "group": job.group,
        "num": job.num,
        "swept": dict(job.swept),
    }
    wandb = OmegaConf.select(cfg, "logger.wandb")
    if isinstance(wandb, DictConfig) and "_target_" in wandb:
        if wandb.get("group") is None and job.group:
            wandb.group = job.group
        # Name the run after its swept values unless a name was given on purpose.
        default_name = OmegaConf.to_container(wandb, resolve=False).get("name") == "${name}"
        if job.label and default_name:
            wandb.name = job.label
        # The swept values as tags too (`beta=0.025`), beside the config columns (model.beta).
        given = list(OmegaConf.to_container(wandb, resolve=True).get("tags") or [])
        wandb.tags = given + [t for t in swept_tags(job.swept) if t not in given]
    if cfg.get("ckpt_path") in (None, "") and _has_checkpoints(job.output_dir):
        # A job folder is unique to its sweep: checkpoints in it come from an earlier
        # attempt of this very job (requeued after preemption, or the sweep run again with
        # the same hydra.sweep.dir). Continue from the newest instead of starting over.
        log.warning("Job %s resumes from its newest checkpoint in %s", job.num, job.output_dir)
        # (genlab.training then also continues the W&B run whose id the checkpoint holds.)
        cfg.ckpt_path = "last"


def swept_tags(swept: dict[str, str]) -> list[str]:
    """`beta=0.025` per swept key (short names as in the job's folder), within W&B's 64
    characters per tag."""
    names = short_names(list(swept))
    return [f"{names[key]}={value}"[:64] for key, value in swept.items()]


def _has_checkpoints(output_dir: str) -> bool:
    folder = Path(output_dir) / "checkpoints"
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.glob("*.ckpt"))


def objective(metrics: dict[str, float], cfg: DictConfig) -> float | None:
    """The metric a sweeper optimises (`optimize_metric`), from a finished run's metrics."""
    name = cfg.get("optimize_metric") or "val/loss"
    value = metrics.get(name)
    return None if value is None else float(value)


# -- running a job -----------------------------------------------------------------------------
def run_sweep_job(cfg: DictConfig, run) -> float | None:
    """Run one sweep job with `run(cfg) -> metrics`; return the value the sweeper optimises
    (NaN when the job failed, which Optuna records as a failed trial)."""
    job = current_job()
    assert job is not None
    if not job.own_process and needs_own_process(cfg):
        return run_in_own_process(cfg, job, keep_hydra_dir=True)
    prepare(cfg, job)

    # These import lightning: only in the process that trains.
    from genlab.callbacks import TrainingInterrupted
    from genlab.sweep import preemption

    rank_zero = global_rank() == 0
    if rank_zero:
        write_status(job.output_dir, job, "running")
    try:
        check_swept_values(cfg, job)
        preemption.install(cfg)
        metrics = run(cfg)
    except TrainingInterrupted as err:
        log.warning("Job %s: %s", job.num, err)
        if rank_zero:
            write_status(job.output_dir, job, "interrupted", **error_fields(err))
        preemption.hand_over()  # on Slurm: submitit requeues the job and exits
        # Ctrl-C or SIGTERM means "stop": the sweep stops too, with the same exit code.
        raise SystemExit(err.exit_code) from None
    except Exception as err:
        if not rank_zero:
            raise  # rank 0 records the job; a failing rank must exit non-zero
        log.error("Job %s (%s) failed: %s", job.num, job.label or "no swept keys", err)
        write_status(job.output_dir, job, "failed", **error_fields(err))
        return math.nan
    except BaseException as err:  # a second Ctrl-C; Lightning turns Ctrl-C outside fit into exit 1
        if rank_zero:
            fields = error_fields(err)
            if isinstance(err, KeyboardInterrupt):
                fields["error"] = "Interrupted by Ctrl-C"
            elif isinstance(err, SystemExit):
                fields["error"] = f"Stopped with exit code {err.code} (Ctrl-C or a kill?)"
            write_status(job.output_dir, job, "interrupted", **fields)
        raise
    value = objective(metrics, cfg)
    name = cfg.get("optimize_metric") or "val/loss"
    if value is None and job.optimizing:
        message = (
            f"optimize_metric={name} was not logged by this run, so the sweeper gets no value. "
            f"Logged: {', '.join(sorted(metrics))}."
        )
        log.error("Job %s: %s", job.num, message)
        if rank_zero:
            write_status(job.output_dir, job, "failed", error=message, error_type="MissingMetric")
        return math.nan
    if rank_zero:
        write_status(job.output_dir, job, "completed", objective={name: value})
    return value


def check_swept_values(cfg: DictConfig, job: JobInfo) -> None:
    """Log the swept values this process trains with, and refuse to train with others than
    the sweep gave this job (every DDP rank runs this check on its own composed config)."""
    from genlab import GenlabError
    from genlab.sweep.keys import overrides_parser

    parser = overrides_parser()
    shown, wrong = [], []
    for key, text in job.swept.items():
        actual = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(actual) or "${" in text:
            # A config group (model=vae) or an interpolation: nothing plain to compare.
            shown.append(f"{key}={text}")
            continue
        expected = parser.parse_override(f"{key}={text}").value()
        shown.append(f"{key}={actual}")
        if actual != expected:
            wrong.append(f"{key}={actual} (the sweep gave {text})")
    log.info("Job %s, rank %s: %s", job.num, global_rank(), ", ".join(shown) or "nothing swept")
    if wrong:
        raise GenlabError(
            f"Job {job.num}, rank {global_rank()} composed {'; '.join(wrong)}: its ranks would "
            "train different models. This is a genlab bug; please report it."
        )

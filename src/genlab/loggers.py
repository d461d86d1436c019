"""Build the loggers of a run's `logger` config and close them. W&B never blocks: without an API
key it logs offline, and a run whose W&B service died with it is still closed and marked.

wandb 0.31 writes through a service process of its own, `wandb-core`, a child of the training
process. A signal sent to the whole job (Slurm's `scancel` signals every process of the job
step) reaches that service too, which then stops at once without writing out what it buffered
(wandb/wandb#9963): the run's `.wandb` file can be left with its header only, and every later
call into wandb raises `ConnectionResetError: Connection lost`. genlab's W&B logger therefore
drops its logging calls once the service is gone (the run goes on and checkpoints), remembers
the last value of each metric and the run config, and `finish_loggers` then starts a fresh
service, reopens the same run id and closes it with those numbers, `genlab/status` and the exit
code. Lost for good: the history that the dead service had not written out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from omegaconf import DictConfig, OmegaConf

from genlab import GenlabError
from genlab.secrets import check_wandb_online, masked_argv, redact, wandb_api_key_available
from genlab.spec_rules import WANDB_MODES

log = logging.getLogger("genlab")


def resolve_wandb_mode(mode: str) -> str:
    if mode not in WANDB_MODES:
        raise GenlabError(
            f"Invalid config: logger.wandb.mode='{mode}'. "
            f"It must be one of {', '.join(WANDB_MODES)}."
        )
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled") and mode == "auto":
        return "disabled" if os.environ["WANDB_MODE"] == "disabled" else "offline"
    if mode == "auto":
        return "online" if wandb_api_key_available() else "offline"
    check_wandb_online(mode)
    return mode


def check_writable(folder: str, key: str) -> None:
    """Refuse a folder genlab cannot write into, naming `key` (W&B would fall back to the
    system temp dir instead of failing)."""
    import tempfile

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise GenlabError(
            f"{key}={folder} cannot be written ({err.strerror or err}). Give a folder you can "
            "write, or drop the override (the default is the run dir)."
        ) from None


def build_loggers(
    logger_cfg: DictConfig | None,
    wandb_resume_id: str | None = None,
    job_type: str = "train",
    resumed: tuple[str, int] | None = None,
) -> list:
    """Instantiate the entries of `logger_cfg` (the run's `logger` subtree); a W&B logger
    continues run `wandb_resume_id` if given, and its run has `job_type` (train / evaluate). A
    run resumed in place from `resumed` (checkpoint path, step) continues its CSV curve
    (genlab.dashboards.CSVLogger)."""
    from hydra.utils import instantiate

    loggers = []
    for key, spec in (logger_cfg or {}).items():
        if spec is None:
            continue
        spec = redact(OmegaConf.to_container(spec, resolve=True))
        if not isinstance(spec, dict) or "_target_" not in spec:
            raise GenlabError(
                f"Invalid config: logger.{key} has no _target_. Choose loggers with "
                "logger=csv, logger=wandb, logger=tensorboard or a list like logger=[csv,wandb]."
            )
        if spec["_target_"].endswith("WandbLogger"):
            mode = resolve_wandb_mode(spec.pop("mode", "auto"))
            if mode == "disabled":
                continue
            if mode == "offline":
                log.warning(
                    "W&B: no API key found (WANDB_API_KEY or `wandb login`), logging offline. "
                    "Upload later with `wandb sync %s/wandb/offline-run-*`.",
                    spec.get("save_dir", "."),
                )
            # wandb's own mode, not Lightning's offline=True, which refuses log_model (offline
            # artifacts are synced with the run) and sets WANDB_MODE for the whole process.
            spec["mode"] = mode
            spec.setdefault("job_type", job_type)
            if wandb_resume_id:
                spec["id"], spec["resume"] = wandb_resume_id, "allow"
        if spec.get("save_dir"):
            check_writable(str(spec["save_dir"]), f"logger.{key}.save_dir")
        if spec["_target_"] == "lightning.pytorch.loggers.CSVLogger":
            spec["_target_"] = "genlab.dashboards.CSVLogger"
            spec["resumed"] = resumed
        if spec["_target_"] == "lightning.pytorch.loggers.WandbLogger":
            spec["_target_"] = f"{__name__}.WandbLogger"  # outlives its service (module doc)
        logger = instantiate(spec)
        if spec["_target_"].endswith("WandbLogger"):
            with masked_argv():  # W&B records the command line when its run starts
                _ = logger.experiment
        loggers.append(logger)
    return loggers


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, except that losing the W&B service never stops the run: once a
    call finds the service gone, logging calls are dropped (with one warning) and the last value
    of each number and the run config are kept for `finish_loggers` (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lightning passes anonymous=None, which wandb 0.31 answers with "The anonymous setting
        # has no effect": leave it out.
        self._wandb_init.pop("anonymous", None)
        self.defined: set[str] = set()  # metrics declared with define_metric
        self.service_lost = False
        self.last_values: dict[str, float] = {}  # what W&B's summary would hold
        self.hyperparams: dict[str, Any] = {}

    def _guarded(self, call: Callable, *args: Any, **kwargs: Any) -> Any:
        if self.service_lost:
            return None
        try:
            return call(*args, **kwargs)
        except ConnectionError as err:  # ConnectionResetError, BrokenPipeError: wandb-core died
            self.service_lost = True
            log.warning(
                "W&B: the service process (wandb-core) is gone (%s), most likely stopped by the "
                "signal that also stops this run; nothing more is logged to W&B. Training goes "
                "on; the W&B run is closed at the end with its last values.",
                err,
            )
            return None

    def log_metrics(self, metrics, step=None) -> None:
        # log_image / log_table / log_text / ... go through here too: keep the numbers only.
        numbers = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        self.last_values.update(numbers)
        if step is not None and numbers:
            self.last_values["trainer/global_step"] = step
        self._guarded(self._define, [k for k in numbers if k not in self.defined])
        self._guarded(super().log_metrics, metrics, step)

    def _define(self, names: list[str]) -> None:
        """Each new metric on the step axis, with its best value in the run summary
        (genlab.dashboards.metric_summary): W&B's group tables then show the best val/loss."""
        from genlab.dashboards import metric_summary

        for name in names:
            summary = metric_summary(name)
            options = {"summary": summary} if summary else {}
            self.experiment.define_metric(name, step_metric="trainer/global_step", **options)
            self.defined.add(name)

    def log_hyperparams(self, params) -> None:
        from lightning.fabric.utilities.logger import _convert_params

        # Called for the run config (genlab.builders.record_config) and by Lightning for the
        # model's hparams: W&B's config holds them all.
        self.hyperparams.update(_convert_params(params))
        self._guarded(super().log_hyperparams, params)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self._guarded(super().after_save_checkpoint, checkpoint_callback)

    def finalize(self, status: str) -> None:
        self._guarded(super().finalize, status)


# How long closing a W&B run may take before genlab gives up on it. After a signal the job has
# little time left (Slurm sends SIGKILL KillWait seconds after SIGTERM, 30 s by default), and a
# service that does not answer would otherwise hold the process forever; a run that ended
# normally may need its upload to finish, which can take minutes when online.
FINISH_TIMEOUT_S = {"interrupted": 20.0, "cancelled": 20.0}
FINISH_TIMEOUT_DEFAULT_S = 600.0
LOST_HISTORY = (
    "history logged since wandb-core last wrote to disk (it stops at once on SIGTERM/SIGINT "
    "without flushing: wandb/wandb#9963)"
)


def run_ending(err: BaseException | None) -> dict[str, Any]:
    """How the run ended, for its W&B summary: genlab/status (completed / failed / interrupted,
    or cancelled where Slurm says the job was), genlab/exit_code and genlab/signal."""
    from genlab.callbacks import TrainingInterrupted

    if err is None:
        return {"genlab/status": "completed", "genlab/exit_code": 0}
    if isinstance(err, TrainingInterrupted):
        name, code = err.signal_name, err.exit_code
    elif isinstance(err, KeyboardInterrupt):
        name, code = "SIGINT", 128 + signal.SIGINT
    elif isinstance(err, SystemExit) and isinstance(err.code, int) and err.code > 128:
        name, code = _signal_name(err.code - 128), err.code
    else:
        failed = type(err).__name__
        return {"genlab/status": "failed", "genlab/exit_code": 1, "genlab/error": failed}
    state = slurm_job_state() if name == "SIGTERM" else None
    status = "cancelled" if state == "CANCELLED" else "interrupted"
    return {"genlab/status": status, "genlab/exit_code": code, "genlab/signal": name}


def slurm_job_state() -> str | None:
    """This Slurm job's state in Slurm's accounting (`CANCELLED` as soon as it is `scancel`led,
    while the job still runs its clean-up; `scontrol` says COMPLETING then), or None outside
    Slurm or when sacct does not answer in time."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    try:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job, "-o", "State"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.split()
    return words[0] if words else None  # "CANCELLED by 0" -> CANCELLED


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _bounded(call: Callable[[], None], timeout: float) -> BaseException | None:
    """Run `call` in a daemon thread for at most `timeout` seconds: None when it returned,
    else the exception it raised (TimeoutError when it did not return in time)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as err:  # reported to the caller, which decides
            outcome.append(err)

    thread = threading.Thread(target=target, name="genlab-wandb-finish", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else TimeoutError(f"no answer from W&B within {timeout:.0f} s")


def finish_loggers(loggers: list) -> None:
    """Close the W&B run so the next job of a sweep starts its own run. Called from a `finally`:
    the exception in flight, if any, decides the run's state (genlab/status, exit code 0, 1, or
    128 + the signal). Never raises: W&B's trouble is no reason for a job to fail."""
    wandb_loggers = [lg for lg in loggers if isinstance(lg, _LightningWandbLogger)]
    if not wandb_loggers:
        return
    ending = run_ending(sys.exc_info()[1])
    for logger in wandb_loggers:
        run = logger._experiment  # None where no run was started (ranks other than 0)
        if run is not None and hasattr(run, "finish"):
            _close(logger, run, ending)


def _close(logger, run, ending: dict[str, Any]) -> None:
    code = ending["genlab/exit_code"]
    timeout = FINISH_TIMEOUT_S.get(ending["genlab/status"], FINISH_TIMEOUT_DEFAULT_S)

    def finish() -> None:
        run.summary.update(ending)
        run.finish(exit_code=code)
        _wait_until_written()

    lost = getattr(logger, "service_lost", False)
    err = None if lost else _bounded(finish, timeout)
    if not lost and err is None:
        return
    if isinstance(err, TimeoutError):
        # A service that does not answer would also hold the process at exit (wandb's atexit
        # teardown waits for it): stop it, then treat it as lost.
        _kill_service()
    elif err is not None and not isinstance(err, ConnectionError):
        log.warning("W&B: closing run %s failed (%s: %s).", run.id, type(err).__name__, err)
        return
    state = f"{ending['genlab/status']}, exit code {code}"
    if "genlab/signal" in ending:
        state += f", {ending['genlab/signal']}"
    summary = {**getattr(logger, "last_values", {}), **ending}
    err = _bounded(lambda: _reopen_and_close(logger, run, summary, code), timeout)
    if err is None:
        log.warning(
            "W&B: the service process (wandb-core) of run %s was gone (or did not answer) when "
            "the run ended. "
            "Reopened the run in a new service and closed it with its last values and its state "
            "(%s); lost: the %s.",
            run.id,
            state,
            LOST_HISTORY,
        )
    else:
        log.warning(
            "W&B: run %s could not be closed (its service process was gone, and reopening it "
            "failed: %s: %s); it stays unfinished in W&B (%s). Lost: the %s.",
            run.id,
            type(err).__name__,
            err,
            state,
            LOST_HISTORY,
        )


def _wait_until_written() -> None:
    """Return once the finished run's .wandb file is complete on disk. wandb 0.31's finish()
    only tells its service to close the run's file (a message it does not wait on): read at
    once, the file can still hold its header alone. Stopping the service waits for it; the
    next run of this process starts a new one. A service that other runs of this process
    still use (one the caller started) is left alone: it writes the file out later."""
    import wandb

    if wandb.run is None:
        wandb.teardown()


def _kill_service() -> None:
    """Kill this process's wandb-core (private wandb 0.31 attributes; best effort)."""
    from wandb.sdk import wandb_setup

    connection = getattr(wandb_setup._singleton, "_connection", None)
    process = getattr(getattr(connection, "_proc", None), "_process", None)
    if process is not None:
        process.kill()


def _reopen_and_close(logger, run, summary: dict[str, Any], code: int) -> None:
    """Drop the connection to the dead service, reopen the same run id in a new one (same mode
    and dir: offline, a second offline-run dir with the same id, synced with the first), write
    the config and summary, and finish it with the run's exit code."""
    import wandb

    with contextlib.suppress(Exception):
        wandb.teardown()  # forgets the dead service first, then fails to tell it
    init = {**getattr(logger, "_wandb_init", {}), "id": run.id, "resume": "allow"}
    with masked_argv():
        reopened = wandb.init(**init)
    logger._experiment = reopened
    if getattr(logger, "hyperparams", None):
        # Lightning's own conversion of the params (flattening, callables), onto the new run.
        _LightningWandbLogger.log_hyperparams(logger, logger.hyperparams)
    reopened.summary.update(summary)
    reopened.finish(exit_code=code)

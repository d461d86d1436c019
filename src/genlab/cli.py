"""Command-line front door: friendlier errors than a raw Hydra failure, and exit codes.

- `precheck`: before Hydra starts a run, the same overrides are composed once through the
  compose API, so a typo gets "did you mean" and a bad value gets one readable paragraph, with
  nothing written
- `task_wrapper`: the one failure policy around a task run by a Hydra main (`genlab.train.run`):
  a single run exits with a message and a code; a sweep job records its outcome and returns
- `start`: what `python train.py` does: precheck, Hydra's main, the sweep's exit code
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from hydra.experimental.callback import Callback

from genlab import GenlabError

# Exit codes: 2 = fix your input; 128 + signal number = interrupted (a checkpoint was written).
EXIT_USAGE = 2


# Hydra's flags that only print the composed config (with their value, where they take one):
# the overrides are composed as for a run, so a bad key gets genlab's message there too.
_SHOW_FLAGS = {"--cfg": True, "-c": True, "--package": True, "-p": True, "--resolve": False}


def _user_overrides(argv: list[str]) -> list[str] | None:
    """The overrides to precheck, or None when the command is not a plain single run (or one
    that prints its config). Of Hydra's own, only hydra.searchpath (a user's config folders)
    changes the composition."""
    plain, args = [], iter(argv)
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in _SHOW_FLAGS:
            if _SHOW_FLAGS[flag] and "=" not in arg:
                next(args, None)  # the flag's value (`--cfg job`)
        elif arg.startswith("-"):  # -m/--multirun, --help, --info, ...: Hydra's job
            return None
        else:
            plain.append(arg)
    return [
        a
        for a in plain
        if a.startswith("hydra.searchpath=") or not a.lstrip("+~").startswith(("hydra.", "hydra/"))
    ]


def _shows_config(argv: list[str]) -> bool:
    return any(arg.split("=", 1)[0] in _SHOW_FLAGS for arg in argv)


def precheck(argv: list[str], config_name: str) -> None:
    """Compose and validate the config for `argv`; raise GenlabError with a friendly message.

    A multirun (`-m`) is expanded and each job's config checked (genlab.sweep.precheck)."""
    from genlab.extras import check_argv
    from genlab.models.catalog import load_plugins, plugins_in
    from genlab.sweep.precheck import check_multirun, is_multirun

    check_argv(argv)
    load_plugins(plugins_in(argv))  # before composing: model=<a plugin's> needs its schema node
    if is_multirun(argv):
        check_multirun(argv, config_name)
        return
    overrides = _user_overrides(argv)
    if overrides is None:
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from genlab.composition import compose, friendly_message
    from genlab.config import validate

    try:
        cfg = compose(config_name, overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # ValueError: `=1`
        message = friendly_message(err, overrides, config_name, config_name == "train")
        raise GenlabError(message) from None
    if config_name == "train" and not _shows_config(argv):  # a config is shown as it is
        validate(cfg)


# Set by `raising_errors` (genlab.api.train): a library caller gets the GenlabError, not an exit.
_raise_instead_of_exit = False


class _Refused(BaseException):
    """`fail` within `raising_errors`: Hydra turns an Exception raised by a callback (RunDirGuard)
    into a warning and goes on with the run, so this passes through it as a BaseException."""


@contextlib.contextmanager
def raising_errors():
    """Within: `fail` raises GenlabError(message) instead of printing it and exiting."""
    global _raise_instead_of_exit
    before, _raise_instead_of_exit = _raise_instead_of_exit, True
    try:
        yield
    except _Refused as refused:
        raise GenlabError(str(refused)) from None
    finally:
        _raise_instead_of_exit = before


@contextlib.contextmanager
def one_line_on_stop(message: str):
    """SIGTERM raised as Ctrl-C inside (so what is being written is cleaned up the same way);
    either ends the command with `message` (its {by} the signal) and exit code 130 / 143."""
    import signal

    def terminated(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    except KeyboardInterrupt as stop:
        by, code = ("SIGTERM", 143) if stop.args == ("SIGTERM",) else ("Ctrl-C", 130)
        fail(message.replace("{by}", by), code=code)  # (a path may hold braces)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    if _raise_instead_of_exit:
        raise _Refused(message)
    print(f"genlab: error: {message}", file=sys.stderr)
    sys.exit(code)


def redact_hydra_records(cfg) -> None:
    """Mask secrets given as overrides in what Hydra wrote into the run dir's .hydra/."""
    from genlab.secrets import redact_files

    hydra_dir = f"{cfg.paths.output_dir}/.hydra"
    redact_files([f"{hydra_dir}/{name}" for name in HYDRA_RECORDS])


def task_wrapper(task: Callable[[Any], dict]) -> Callable[[Any], float | None]:
    """`task(cfg) -> metrics` as a Hydra task function returning what a sweeper optimises.

    A single run: bad input (GenlabError) exits 2 with one line, an interruption exits
    128 + signal after its checkpoint. One job of a sweep: genlab.sweep.job.run_sweep_job
    records a failure in the job's status.json and returns, so the sweep goes on (the exit code
    is decided when the sweep ends); a DDP job runs in a process tree of its own.
    Secrets given on the command line are first redacted from Hydra's records of the run."""

    @functools.wraps(task)
    def wrapped(cfg) -> float | None:
        from genlab.sweep.job import current_job, objective, run_sweep_job

        redact_hydra_records(cfg)
        if current_job() is not None:
            return run_sweep_job(cfg, task)
        from genlab.callbacks import TrainingInterrupted

        try:
            metrics = task(cfg)
        except GenlabError as err:
            from genlab.rundir import discard_if_unused

            discard_if_unused(cfg.paths.output_dir)  # a refused run leaves no empty run dir
            fail(str(err))
        except TrainingInterrupted as err:
            fail(str(err), code=err.exit_code)
        return objective(metrics, cfg)

    return wrapped


# What Hydra writes into <run dir>/.hydra: each may hold a secret given as an override.
HYDRA_RECORDS = ("config.yaml", "hydra.yaml", "overrides.yaml")


class RunDirGuard(Callback):
    """A Hydra callback (conf/train.yaml, hydra.callbacks) for single runs, run before Hydra
    writes anything into the run dir (genlab.rundir): rank 0 takes the dir's lock, so a second
    live run in the dir ends here (exit 2, naming the holder); and where the dir already holds
    Hydra's records (a resume in place), Hydra does not rewrite them: genlab writes them once
    the checkpoint has been restored, so a resume that fails keeps the originals."""

    def on_run_start(self, config, **kwargs) -> None:
        from pathlib import Path

        from omegaconf import open_dict, read_write

        from genlab import rundir
        from genlab.sweep.own_process import ENV_JOB

        run_dir = Path(str(config.hydra.run.dir))
        try:
            if rundir.is_rank_zero():  # (the other DDP ranks share rank 0's dir)
                # Before Hydra opens train.log or writes .hydra/. A sweep job run in a process
                # of its own resumes its folder itself (genlab.sweep.job.prepare).
                in_place = rundir.resumes_in_place(config.get("ckpt_path"), run_dir)
                new_run = not in_place and not os.environ.get(ENV_JOB)
                rundir.check_not_busy(run_dir)  # a live run's dir: say so, not "holds results"
                rundir.check_run_dir(run_dir, new_run)
                if not new_run:  # what a resume in place keeps of metrics.json: readable?
                    rundir.recorded_metrics(run_dir)
                rundir.lock(run_dir)
        except GenlabError as err:
            fail(str(err))
        subdir = config.hydra.output_subdir
        if subdir is not None and (run_dir / str(subdir)).is_dir():
            rundir.defer_hydra_records(run_dir / str(subdir), str(subdir))
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None

    def on_run_end(self, config, **kwargs) -> None:
        from genlab import rundir

        rundir.unlock(str(config.hydra.run.dir))


def start(hydra_main: Callable[[], Any], argv: list[str], config_name: str) -> None:
    """Precheck `argv`, run Hydra's main, exit with the sweep's code (0 for a single run).
    A sweep stopped early (Ctrl-C, a sweeper error) still reports the jobs it ran."""
    try:
        precheck(argv, config_name)
    except GenlabError as err:
        fail(str(err))
    from genlab.sweep.callback import finish_sweep, sweep_exit_code

    try:
        hydra_main()
    except SystemExit as err:
        if err.code != EXIT_USAGE:  # a refusal (a launcher's, before any job) has no report
            finish_sweep(interrupted=True)
        raise
    except BaseException:
        finish_sweep(interrupted=True)
        raise
    sys.exit(sweep_exit_code())

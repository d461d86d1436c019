"""Command-line front door: friendlier errors than a raw Hydra failure, and exit codes.

- `run_once`: a plain single run (`python train.py model=vae ...`): its config composed once,
  validated once (`checked_config`: a typo gets "did you mean", a bad value one readable
  paragraph, with nothing written), then run as Hydra's main would run it
- `precheck`: any other command (a multirun, --cfg, --help): the same overrides composed and
  checked before Hydra's main starts, with the same messages
- `task_wrapper`: the one failure policy around a task run by a Hydra main
  (`genlab.training.run`): a single run exits with a message and a code; a sweep job records its
  outcome and returns
- `start`: what `python train.py` does: `run_once`, or precheck, Hydra's main and the sweep's
  exit code

A single run imports nothing of genlab.sweep: the sweep's code is imported for a multirun (its
precheck, its callback's hooks, its jobs) only.
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
from genlab.exits import EXIT_USAGE, fail

# Hydra's flags of a multirun.
MULTIRUN_FLAGS = ("-m", "--multirun")


# Hydra's flags that only print the composed config (with their value, where they take one):
# the overrides are composed as for a run, so a bad key gets genlab's message there too.
_SHOW_FLAGS = {"--cfg": True, "-c": True, "--package": True, "-p": True, "--resolve": False}


def _user_overrides(argv: list[str]) -> list[str] | None:
    """The overrides to precheck, or None when the command is not a plain single run (or one
    that prints its config)."""
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
    return _composed_by_genlab(plain)


def _composed_by_genlab(overrides: list[str]) -> list[str]:
    """Of Hydra's own overrides, only hydra.searchpath (a user's config folders) changes the
    composition."""
    return [
        a
        for a in overrides
        if a.startswith("hydra.searchpath=") or not a.lstrip("+~").startswith(("hydra.", "hydra/"))
    ]


# Hydra's flags that add a config folder of the user's, and that name the primary config.
_CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
_CONFIG_NAME_FLAGS = ("--config-name", "-cn")


def config_dir_as_searchpath(argv: list[str]) -> list[str]:
    """`--config-dir X` (`-cd X`) as the override Hydra makes of it, X first in
    `hydra.searchpath=[file://<X absolute>,...]` (Hydra puts it before hydra.searchpath's own
    folders): then every composition of genlab's sees the folder, the precheck and the plugins
    a file there names included, and a sweep's jobs in processes of their own get it with
    hydra.searchpath. With `--config-name` (a primary config of the folder's, which Hydra looks
    for only in its own search path, not in hydra.searchpath) `--config-dir <X absolute>` stays
    too, for Hydra's main, which runs such a command."""
    names_primary = any(a.partition("=")[0] in _CONFIG_NAME_FLAGS for a in argv)
    folders, rest, args = [], [], iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag not in _CONFIG_DIR_FLAGS:
            rest.append(arg)
            continue
        value = value if eq else next(args, "")
        path = os.path.abspath(os.path.expanduser(value)) if value else ""
        if not os.path.isdir(path):
            raise GenlabError(
                f"{flag} {value}: no such folder. Give the folder holding your configs, e.g. "
                "--config-dir my_conf (as hydra.searchpath=[file:///abs/my_conf])."
            )
        folders.append(f"file://{path}")
        if names_primary:
            rest += [flag, path]
    if not folders:
        return argv
    from hydra.core.override_parser.overrides_parser import OverridesParser

    searchpath = [a for a in rest if a.startswith("hydra.searchpath=")]
    if searchpath:  # the last one counts, as in Hydra
        try:
            value = OverridesParser.create().parse_override(searchpath[-1]).value()
        except Exception as err:
            raise GenlabError(f"Cannot read the override '{searchpath[-1]}': {err}") from None
        folders += [str(v) for v in value] if isinstance(value, list) else [str(value)]
        rest = [a for a in rest if not a.startswith("hydra.searchpath=")]
    quoted = ",".join(f'"{p}"' if "'" in p else f"'{p}'" for p in folders)
    # Among the other overrides: argparse takes them as one run of arguments.
    at = next((i for i, a in enumerate(rest) if "=" in a and not a.startswith("-")), len(rest))
    return [*rest[:at], f"hydra.searchpath=[{quoted}]", *rest[at:]]


def is_multirun(argv: list[str]) -> bool:
    """A plain multirun: -m / --multirun and no other flag (--cfg, --help, ... are Hydra's)."""
    flags = [a for a in argv if a.startswith("-")]
    return bool(flags) and all(f in MULTIRUN_FLAGS for f in flags)


def single_run(argv: list[str]) -> list[str] | None:
    """`argv` itself when it starts one plain run: overrides only (`--config-dir` is
    hydra.searchpath by now), no `hydra.mode=` of its own. genlab composes that run's config
    once and runs it (`run_once`). None for any other command: Hydra's main runs it (-m, --cfg,
    --help, --config-name, ...)."""
    for arg in argv:
        if arg.startswith("-") or arg.lstrip("+~").startswith("hydra.mode="):
            return None
    return list(argv)


def _command_line_first(argv: list[str]) -> None:
    """What is read of the command line before anything is composed: the extras its options
    need, and the modules its `plugins=` names (model=<a plugin's> needs its schema node)."""
    from genlab.extras import check_argv
    from genlab.models.catalog import load_plugins, plugins_in

    check_argv(argv)
    load_plugins(plugins_in(argv))


def checked_config(overrides: list[str], config_name: str, *, with_hydra: bool = False):
    """The config `overrides` compose (with the plugins it names), validated when it is a
    training run's (genlab.run_rules.validate_run_config); a composition error or a bad value
    raises GenlabError with one readable paragraph. Nothing is written. `with_hydra`: with
    Hydra's own node, as a run needs it (validated without it, as the task gets it)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from genlab.composition import compose, friendly_message
    from genlab.run_rules import validate_run_config

    try:
        cfg = compose(config_name, overrides, return_hydra_config=with_hydra, user_plugins=True)
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # ValueError: `=1`
        message = friendly_message(err, overrides, config_name, config_name == "train")
        raise GenlabError(message) from None
    if config_name == "train":
        validate_run_config(_without_hydra(cfg) if with_hydra else cfg)
    return cfg


def _without_hydra(cfg):
    """A copy of `cfg` without Hydra's node: what Hydra hands a task (hydra.core.utils.run_job)."""
    import copy

    from omegaconf import open_dict, read_write

    task_cfg = copy.deepcopy(cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def precheck(argv: list[str], config_name: str) -> None:
    """Compose and check the config(s) the command `argv` would run, raising GenlabError with a
    friendly message; nothing is written and nothing runs.

    A plain single run: `checked_config`, as `run_once` composes it. A multirun (`-m`): each job's
    config checked (genlab.sweep.precheck); each job still validates its own config when it runs
    (a sweeper may choose values the precheck never composed; a Slurm job checks the
    accelerator of its node). Hydra's own jobs (--cfg, --help, --config-name, ...): composed for
    genlab's message on a bad override only, since Hydra's main composes them."""
    _command_line_first(argv)
    if is_multirun(argv):
        from genlab.sweep.precheck import check_multirun

        check_multirun(argv, config_name)
        return
    single = single_run(argv)
    if single is not None:
        checked_config(single, config_name)
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from genlab.composition import compose, friendly_message

    overrides = _user_overrides(argv)
    if overrides is None:  # Hydra's own job (--help, --info): it composes, with the plugins
        with contextlib.suppress(GenlabError, HydraException, OmegaConfBaseException, ValueError):
            plain = [a for a in argv if "=" in a and not a.startswith("-")]
            compose(config_name, _composed_by_genlab(plain), user_plugins=True)
        return
    try:  # --cfg (the config shown as it is), hydra.mode=: Hydra's main runs it, its run validates
        compose(config_name, overrides, user_plugins=True)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        message = friendly_message(err, overrides, config_name, config_name == "train")
        raise GenlabError(message) from None


def run_once(task: Callable[[Any], Any], overrides: list[str], app: str) -> Any:
    """Run the single run of the app (`train`, `sample`: its config file) that `overrides`
    start (overrides only, as `single_run` says: its callers check). Its config is composed
    once and validated once (`checked_config`: a bad override or value raises GenlabError
    before anything is written), then run as Hydra's main runs one (hydra 1.3's Hydra.run):
    hydra.callbacks' on_run_start (RunDirGuard), the run dir with .hydra/ and the log file
    (hydra.core.utils.run_job), `task(cfg)`, on_run_end; the caller's logging is put back
    afterwards. Returns the task's value, or raises what the task raised.
    Hydra's main would compose the same config twice more (its mode, then its run)."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext

    from genlab.composition import CONF_DIR, HYDRA_VERSION_BASE, register_resolvers

    _command_line_first(overrides)
    register_resolvers()
    with (
        _logging_kept(),
        initialize_config_dir(str(CONF_DIR), version_base=HYDRA_VERSION_BASE, job_name=app),
    ):
        # hydra.mode=RUN: what Hydra's main adds to a run's overrides (.hydra/hydra.yaml).
        run_overrides = [*overrides, "hydra.mode=RUN"]
        cfg = checked_config(run_overrides, app, with_hydra=True)
        configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name=app)
        result = run_job(
            hydra_context=HydraContext(
                config_loader=GlobalHydra.instance().hydra.config_loader, callbacks=callbacks
            ),
            task_function=task,
            config=cfg,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
            configure_logging=True,
        )
        callbacks.on_run_end(config=cfg, config_name=app, job_return=result)
        return result.return_value


@contextlib.contextmanager
def _logging_kept():
    """After a run (Hydra configures the root logger: console, train.log), the caller's handlers
    and level put back and train.log closed: the process's logging is left as it was."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


class RunRefused(BaseException):
    """RunDirGuard's refusal of a run dir. Hydra turns an Exception raised by a callback into a
    warning and goes on with the run, so this passes through it as a BaseException: `start`
    ends the command with it (exit 2), `raising_errors` raises it as GenlabError."""


@contextlib.contextmanager
def raising_errors():
    """Within (genlab.api.train): RunDirGuard's refusal raised as GenlabError(message)."""
    try:
        yield
    except RunRefused as refused:
        raise GenlabError(str(refused)) from None


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
        from genlab.rundir import in_sweep_job

        redact_hydra_records(cfg)
        if in_sweep_job():
            from genlab.sweep.job import run_sweep_job

            return run_sweep_job(cfg, task)
        from genlab.callbacks import TrainingInterrupted

        try:
            task(cfg)
        except GenlabError as err:
            from genlab.rundir import discard_if_unused

            discard_if_unused(cfg.paths.output_dir)  # a refused run leaves no empty run dir
            fail(str(err))
        except TrainingInterrupted as err:
            fail(str(err), code=err.exit_code)
        return None  # (what a sweeper optimises; Hydra's main drops a single run's value)

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

        run_dir = Path(str(config.hydra.run.dir))
        try:
            if rundir.is_rank_zero():  # (the other DDP ranks share rank 0's dir)
                # Before Hydra opens train.log or writes .hydra/. A sweep job run in a process
                # of its own resumes its folder itself (genlab.sweep.job.prepare).
                in_place = rundir.resumes_in_place(config.get("ckpt_path"), run_dir)
                new_run = not in_place and not os.environ.get(rundir.ENV_JOB)
                rundir.check_not_busy(run_dir)  # a live run's dir: say so, not "holds results"
                rundir.check_run_dir(run_dir, new_run)
                if not new_run:  # what a resume in place keeps of metrics.json: readable?
                    rundir.recorded_metrics(run_dir)
                rundir.lock(run_dir)
        except GenlabError as err:
            raise RunRefused(str(err)) from None
        subdir = config.hydra.output_subdir
        if subdir is not None and (run_dir / str(subdir)).is_dir():
            rundir.defer_hydra_records(run_dir / str(subdir), str(subdir))
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None

    def on_run_end(self, config, **kwargs) -> None:
        from genlab import rundir

        rundir.unlock(str(config.hydra.run.dir))


class SweepHooks(Callback):
    """conf/train.yaml's `hydra.callbacks.genlab_sweep`: genlab.sweep.callback.SweepCallback
    (sweep.json when a multirun starts, the report when it ends; `report`, `metrics` are its
    options), imported when a multirun starts: Hydra instantiates its callbacks for a single run
    too, which then imports nothing of the sweep."""

    def __init__(self, report: bool = True, metrics: list[str] | None = None) -> None:
        self.options = {"report": report, "metrics": metrics}
        self._sweep: Callback | None = None

    def _callback(self) -> Callback:
        if self._sweep is None:
            from genlab.sweep.callback import SweepCallback

            self._sweep = SweepCallback(**self.options)
        return self._sweep

    def on_multirun_start(self, config, **kwargs) -> None:
        self._callback().on_multirun_start(config, **kwargs)

    def on_multirun_end(self, config, **kwargs) -> None:
        self._callback().on_multirun_end(config, **kwargs)


def start(
    hydra_main: Callable[[], Any], run_task: Callable[[Any], Any], argv: list[str], config_name: str
) -> None:
    """What `python train.py <argv>` (and sample.py) does. A plain single run: `run_once` with
    `run_task`, its config composed and validated once. Any other command: `precheck`, then
    Hydra's main; a sweep exits with its code (a run returns: exit code 0). A sweep stopped
    early (Ctrl-C, a sweeper error) still reports the jobs it ran."""
    single = single_run(argv)
    try:
        if single is None:
            precheck(argv, config_name)
            hydra_main()
        else:
            run_once(run_task, single, config_name)
    except GenlabError as err:  # bad input, before anything ran (a task exits on its own)
        fail(str(err))
    except RunRefused as refused:
        fail(str(refused))
    except SystemExit as err:
        if err.code != EXIT_USAGE:  # a refusal (a launcher's, before any job) has no report
            _finish_sweep()
        raise
    except BaseException:
        _finish_sweep()
        raise
    sweep = _sweep_run()
    if sweep is not None:
        sys.exit(sweep.sweep_exit_code())


def _sweep_run():
    """genlab.sweep.callback where this process ran a sweep (its callback's hooks import it),
    else None: a single run never imports it."""
    return sys.modules.get("genlab.sweep.callback")


def _finish_sweep() -> None:
    sweep = _sweep_run()
    if sweep is not None:
        sweep.finish_sweep(interrupted=True)

"""genlab's commands, one Hydra app each, whichever way they are started:

    genlab-train  [overrides] [-m] [--cfg job] [--help] [-sc install=bash] [--version]
    genlab-sample run=<run dir or .ckpt> task=<task> [key=value ...]
    genlab-export <run dir or .ckpt> <new folder>

are pyproject.toml's [project.scripts]; `python -m genlab.train` / `genlab.sample` /
`genlab.export` run the same (one module each, so that Lightning's DDP, which starts the other
ranks by re-running `python -m <module> <arguments>`, starts the same command; a sweep's
own-process jobs run `python -m genlab.train`), and train.py / sample.py at the top of the
repository are thin wrappers over `train` and `sample` here.

The configs come from genlab.composition.CONF_DIR (an absolute config_path: the installed
package's genlab/conf, or a checkout's conf/); `hydra.searchpath=[file://my_conf]` adds a
folder of one's own on top. Heavy imports (torch, lightning) happen inside the tasks, so
`--cfg job`, `--help` and bad input answer fast.
Exit codes: 0 done, 2 bad input (one line on stderr, nothing written), 130/143 a training
interrupted by SIGINT/SIGTERM after writing a checkpoint; for a sweep (`-m`), 1 when any job
did not complete, 2 when the sweep is refused before it starts.
"""

from __future__ import annotations

import functools
import re
import sys

import hydra
from omegaconf import DictConfig

from genlab import GenlabError, __version__
from genlab.cli import config_dir_as_searchpath, start, task_wrapper
from genlab.composition import CONF_DIR, HYDRA_VERSION_BASE, register_resolvers
from genlab.exits import fail, one_line_on_stop

register_resolvers()  # before Hydra composes: conf/train.yaml interpolates ${genlab_pid:} ...


def _train(cfg: DictConfig, validated: bool = False) -> dict:
    from genlab.models.catalog import load_plugins
    from genlab.training import run

    # The command line's (a Slurm job runs this without the command line's precheck).
    load_plugins(cfg.get("plugins") or ())
    return run(cfg, validated=validated)


# A plain single run's config was validated where it was composed (genlab.cli.run_once); a
# sweep's job, a Slurm job on its node and a --config-name run validate theirs in the run.
_single_run_task = task_wrapper(functools.partial(_train, validated=True))
_train_task = task_wrapper(_train)


@hydra.main(version_base=HYDRA_VERSION_BASE, config_path=str(CONF_DIR), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Hydra's main for the commands genlab.cli.run_once does not run itself (-m, a sweep's
    job, --cfg, --help, --config-name)."""
    return _train_task(cfg)


def _sample(cfg: DictConfig) -> None:
    """Exit codes: 0 done, 2 bad input (one line on stderr, nothing written), 130/143 stopped
    by Ctrl-C/SIGTERM (one line; a file being written is removed, those written before stay)."""
    from genlab.sample import run

    stopped = "sampling stopped by {by}; the file it was writing was removed."
    try:
        with one_line_on_stop(stopped):
            written = run(cfg)
    except GenlabError as err:
        fail(str(err))
    for path in written:
        print(f"wrote {path}")


@hydra.main(version_base=HYDRA_VERSION_BASE, config_path=str(CONF_DIR), config_name="sample")
def sample_main(cfg: DictConfig) -> None:
    """Hydra's main for sample.py's --help and --cfg (a plain call is genlab.cli.run_once)."""
    _sample(cfg)


# Options of sample's whose values are paths. Lightning names checkpoints
# epoch=004-step=2110.ckpt, and an unquoted '=' inside a value is a Hydra syntax error, so such
# values get quoted here.
PATH_OPTIONS = ("run", "out_dir", "data_dir", "anomaly_data_dir")


def quote_paths(argv: list[str]) -> list[str]:
    """`run=a/epoch=1.ckpt` -> `run='a/epoch=1.ckpt'`; anything already quoted, or holding a
    quote, a `$` (Hydra interpolation) or a trailing backslash (it would escape the closing
    quote), is left for Hydra to read as written."""
    quoted = []
    for arg in argv:
        match = re.fullmatch(r"([+~]*)(\w+)=(.*)", arg, flags=re.DOTALL)
        if match and match.group(2) in PATH_OPTIONS:
            value = match.group(3)
            if "=" in value and not re.search(r"['\"$]|\\$", value):
                arg = f"{match.group(1)}{match.group(2)}='{value}'"
        quoted.append(arg)
    return quoted


def _answer_version(argv: list[str]) -> None:
    if "--version" in argv:
        print(f"genlab {__version__}")
        sys.exit(0)


def _config_dirs_as_searchpath() -> None:
    """Hydra's `--config-dir X` in sys.argv as hydra.searchpath (genlab.cli), for Hydra's main
    and for Lightning's DDP ranks, which re-run sys.argv."""
    try:
        sys.argv[1:] = config_dir_as_searchpath(sys.argv[1:])
    except GenlabError as err:
        fail(str(err))


def train() -> None:
    """genlab-train / python train.py: Hydra's command line (sys.argv)."""
    _answer_version(sys.argv[1:])
    _config_dirs_as_searchpath()
    start(train_main, _single_run_task, sys.argv[1:], "train")


def sample() -> None:
    """genlab-sample / python sample.py: Hydra's command line (sys.argv), paths quoted."""
    _answer_version(sys.argv[1:])
    sys.argv[1:] = quote_paths(sys.argv[1:])
    _config_dirs_as_searchpath()
    start(sample_main, _sample, sys.argv[1:], "sample")


def export() -> None:
    """genlab-export: python -m genlab.export's command line."""
    from genlab.export import main

    main(prog="genlab-export")

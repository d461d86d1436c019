"""genlab's optional features and the pip extra that installs each (pyproject.toml's
[project.optional-dependencies]). Asking for a feature whose extra is not installed is one
GenlabError naming the `pip install` to run, before anything starts (exit 2).

- `require(extra, feature)`: raise unless the extra's modules can be imported
- `check_argv(argv)`: the command line's launcher and sweeper choices (genlab.cli.precheck)
- `for_missing_config(group, option)`: the extra whose Hydra plugin provides a config group
  option that Hydra could not find (genlab.composition.friendly_message)

Torch-free: it only asks importlib whether the modules are there.
"""

from __future__ import annotations

import importlib.util
import re

from genlab import GenlabError

# extra -> the modules it brings (all must be importable)
EXTRAS = {
    "slurm": ("submitit", "hydra_plugins.hydra_submitit_launcher"),
    "optuna": ("optuna", "hydra_plugins.hydra_optuna_sweeper"),
    "fid": ("torch_fidelity",),
    "tensorboard": ("tensorboard",),
}

# Config group options registered by an extra's Hydra plugin: without the plugin, Hydra says
# it "could not find" them. (group, option prefix) -> extra.
PLUGIN_CONFIGS = {
    ("hydra/launcher", "submitit_"): "slurm",
    ("hydra/sweeper", "optuna"): "optuna",
    ("hydra/sweeper/sampler", ""): "optuna",
}


def installed(extra: str) -> bool:
    for module in EXTRAS[extra]:
        try:
            if importlib.util.find_spec(module) is None:
                return False
        except (ImportError, ValueError):  # a missing parent package, a broken install
            return False
    return True


def message(extra: str, feature: str) -> str:
    return (
        f"{feature} needs genlab's optional '{extra}' dependencies, which are not installed "
        f'here: pip install "genlab[{extra}]" (in a checkout: pip install -e ".[{extra}]").'
    )


def require(extra: str, feature: str) -> None:
    """Raise GenlabError naming `pip install "genlab[extra]"` unless `extra` is installed."""
    if not installed(extra):
        raise GenlabError(message(extra, feature))


def for_missing_config(group: str, option: str) -> str | None:
    """The message for a config option Hydra could not find that a missing extra provides."""
    for (plugin_group, prefix), extra in PLUGIN_CONFIGS.items():
        if group == plugin_group and option.startswith(prefix) and not installed(extra):
            return message(extra, f"{group}={option}")
    return None


def check_argv(argv: list[str]) -> None:
    """Refuse a launcher or sweeper chosen on the command line whose extra is missing:
    `hydra/launcher=slurm`, `hydra/sweeper=optuna`, `sweep=optuna_*`."""
    for arg in argv:
        match = re.fullmatch(r"[+~]*(hydra/launcher|hydra/sweeper|sweep)=(.*)", arg)
        if not match:
            continue
        key, value = match.groups()
        if key == "hydra/launcher" and ("slurm" in value or "submitit" in value):
            require("slurm", arg)
        elif key != "hydra/launcher" and "optuna" in value:
            require("optuna", arg)

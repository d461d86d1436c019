"""The one list of the models genlab knows, and how a model of one's own joins it.

A model is a spec (a `genlab.specs.ModelSpec` dataclass: its `name`, `_target_`, keys,
defaults, rules and hooks) and the LightningModule its `_target_` names. A module offers
models by listing their specs in `GENLAB_MODELS`; genlab's own are the `spec` modules of
`genlab/models/<name>/`, and everything keyed by a model's name is derived from this list:
`MODEL_SPECS`, `genlab.models.MODEL_CLASSES`, the allow list of `genlab.registry`, and the
Hydra schema nodes `_<name>_spec_` that conf/model/<name>.yaml extends.

A user's model joins only by an act of the user (docs/extending.md, docs/security.md):
- an entry point of an installed package, group `genlab.models`, naming the module;
- `GENLAB_PLUGINS=my_pkg.my_model[,other.module]` in the environment;
- `plugins=[my_pkg.my_model]` on the command line of train.py / sample.py (genlab.cli), or
  `load_plugins([...])` from Python;
- `plugins: [my_pkg.my_model]` in a config of the user's own config folder that the command
  composes (`--config-dir`, hydra.searchpath): genlab.composition.compose(user_plugins=True).
Never because a file names it: a run's config.yaml, a checkpoint or an export may record
`plugins` or a `_target_`, and loading it imports nothing; a model genlab does not know is
refused with `REGISTER_HINT`.

Torch-free: a spec module imports no torch, so configs are checked before torch loads; the
LightningModule is imported when a model is built (`model_class`).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable

from genlab import GenlabError
from genlab.specs import ModelSpec, Rule, schema_node

BUILTIN = (
    "genlab.models.ae.spec",
    "genlab.models.vae.spec",
    "genlab.models.cvae.spec",
    "genlab.models.ddpm.spec",
    "genlab.models.vqvae.spec",
    "genlab.models.latent_ddpm.spec",
)
ENTRY_POINT_GROUP = "genlab.models"
ENV_VAR = "GENLAB_PLUGINS"
REGISTER_HINT = (
    "A model of your own is made known by naming its module: plugins=[my_pkg.my_model] on "
    "the command line or in a config of your config folder (--config-dir), "
    f"{ENV_VAR}=my_pkg.my_model in the environment, or an entry point of group "
    f"{ENTRY_POINT_GROUP} in your package (docs/extending.md); a run's own files never do."
)

MODEL_SPECS: dict[str, type[ModelSpec]] = {}
_loaded: set[str] = set()  # modules whose models are registered
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
MODEL_NAME = re.compile(r"[a-z][a-z0-9_]*")
# The `plugins` key of conf/train.yaml (conf/_plugins_.yaml) and conf/sample.yaml.
PLUGINS = Rule(
    lambda v: (
        isinstance(v, list | tuple)
        and all(isinstance(m, str) for m in v)
        and all(MODULE_NAME.fullmatch(m) for m in v)
    ),
    "a list of Python module names",
    "e.g. plugins=[my_pkg.my_model] (docs/extending.md).",
)


def register(spec_cls: type[ModelSpec]) -> None:
    """Add a model: its spec to MODEL_SPECS and its defaults to Hydra's ConfigStore as
    `_<name>_spec_` (a root config, so no group lists it as a choice)."""
    name = getattr(spec_cls, "name", None)
    if not (isinstance(spec_cls, type) and issubclass(spec_cls, ModelSpec)):
        raise GenlabError(f"{spec_cls!r} is not a model spec (a genlab.specs.ModelSpec dataclass).")
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise GenlabError(
            f"{spec_cls.__name__}.name={name!r}: a model's name is lower-case letters, digits "
            "and _ (it is model=<name> and a folder name)."
        )
    target = getattr(spec_cls, "_target_", "")
    if not isinstance(target, str) or "." not in target:
        raise GenlabError(
            f"{spec_cls.__name__}._target_={target!r}: it names the model's LightningModule "
            "class as module.Class."
        )
    known = MODEL_SPECS.get(name)
    if known is not None and known is not spec_cls:
        raise GenlabError(
            f"{spec_cls.__module__}.{spec_cls.__name__} is called {name!r}, the name of "
            f"{known.__module__}.{known.__name__}: give it a name of its own."
        )
    MODEL_SPECS[name] = spec_cls
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"_{name}_spec_", node=schema_node(spec_cls))


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module (a name the user gave: trusted) and register its `GENLAB_MODELS`."""
    for module in [modules] if isinstance(modules, str) else modules:
        if module in _loaded:
            continue
        if not isinstance(module, str) or not MODULE_NAME.fullmatch(module):
            raise GenlabError(
                f"plugins: {module!r} is not a module name; give dotted Python module names, "
                "e.g. plugins=[my_pkg.my_model]."
            )
        try:
            imported = importlib.import_module(module)
        except ImportError as err:
            raise GenlabError(
                f"plugins: the module {module} cannot be imported ({err}). Is its folder on "
                "PYTHONPATH, or its package installed?"
            ) from None
        specs = getattr(imported, "GENLAB_MODELS", None)
        if not isinstance(specs, list | tuple) or not specs:
            raise GenlabError(
                f"plugins: the module {module} lists no models: it needs GENLAB_MODELS = "
                "(MySpec,), the spec classes of its models (docs/extending.md)."
            )
        for spec_cls in specs:
            register(spec_cls)
        _loaded.add(module)


def plugins_in(argv: Iterable[str]) -> list[str]:
    """The modules a command line names with `plugins=[a.b,c]` (or `+plugins=a.b`)."""
    modules: list[str] = []
    for arg in argv:
        match = re.fullmatch(r"\+{0,2}plugins=(.*)", arg, flags=re.DOTALL)
        if match:
            value = match.group(1).strip().removeprefix("[").removesuffix("]")
            modules += [m.strip().strip("'\"") for m in value.split(",") if m.strip()]
    return modules


def from_environment() -> list[str]:
    return [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]


def _entry_point_modules() -> list[str]:
    from importlib.metadata import entry_points

    return [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]


def model_class(name: str) -> type:
    """The LightningModule of the known model `name`, imported from its spec's `_target_` (code,
    never a file, chose that string); a GenlabError naming the choices and REGISTER_HINT."""
    spec_cls = MODEL_SPECS.get(name) if isinstance(name, str) else None
    if spec_cls is None:
        raise GenlabError(unknown_model(name))
    module, _, attr = spec_cls._target_.rpartition(".")
    cls = getattr(importlib.import_module(module), attr, None)
    if getattr(cls, "spec_class", None) is not spec_cls:
        raise GenlabError(
            f"{spec_cls._target_} (model={name}'s _target_) is not a GenerativeModule whose "
            f"spec_class is {spec_cls.__name__}."
        )
    return cls


def autoencoders() -> tuple[str, ...]:
    """The models whose codes a latent DDPM can be trained on (`is_autoencoder`)."""
    return tuple(name for name, spec in MODEL_SPECS.items() if spec.is_autoencoder)


def unknown_model(name: object) -> str:
    return f"genlab knows no model {name!r}; it knows {', '.join(MODEL_SPECS)}. {REGISTER_HINT}"


load_plugins(BUILTIN)
load_plugins(_entry_point_modules())
load_plugins(from_environment())

"""genlab's allow lists: the only classes a config can name for its model, data, optimizer and
learning-rate schedule, whether the config comes from the command line or from a file.

Configs keep Hydra's `_target_` strings (conf/ reads as before), but nothing here imports the
module a string names: each one is looked up in the tables below, and any other is refused,
naming the key and the choices, as is a key the chosen class does not take. So a run dir's
config.yaml, a checkpoint or an export cannot make genlab import or instantiate a class of its
choosing (docs/security.md). Torch and the data module are imported only when a class is used.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from genlab import GenlabError
from genlab.spec_rules import OPTIMIZERS  # (kept with the optimizer's rule)

# genlab.schedules' factories and the torch.optim.lr_scheduler classes that take
# (optimizer, **numbers): none of them takes a function or another scheduler.
SCHEDULERS = (
    "genlab.schedules.warmup_constant",
    "genlab.schedules.warmup_cosine",
    *(
        f"torch.optim.lr_scheduler.{name}"
        for name in (
            "OneCycleLR",
            "StepLR",
            "MultiStepLR",
            "ExponentialLR",
            "CosineAnnealingLR",
            "CosineAnnealingWarmRestarts",
            "LinearLR",
            "ConstantLR",
            "PolynomialLR",
        )
    ),
)
DATA_MODULE = "genlab.data.ImageDataModule"


def _refuse(key: str, value: Any, choices: str, fix: str) -> GenlabError:
    return GenlabError(
        f"Invalid config: {key}={value!r} is not one genlab offers: {key} must be {choices}. {fix}"
    )


def _unknown_arguments(key: str, target: str, given, takes: list[str]) -> None:
    unknown = sorted(k for k in given if k not in takes)
    if unknown:
        raise GenlabError(
            f"Invalid config: {key}.{unknown[0]} is not an argument of {target} (it takes "
            f"{', '.join(takes)}). Drop +{key}.{unknown[0]}=."
        )


# -- optimizers ------------------------------------------------------------------------------------
def optimizer_class(target: Any, key: str = "model.optimizer._target_") -> type:
    """The torch.optim class `target` names (torch.optim.<one of OPTIMIZERS>)."""
    name = target[len("torch.optim.") :] if isinstance(target, str) else None
    if not (isinstance(target, str) and target.startswith("torch.optim.") and name in OPTIMIZERS):
        raise _refuse(
            key,
            target,
            f"one of torch.optim.{{{','.join(OPTIMIZERS)}}}",
            f"Give a torch.optim class, e.g. {key}=torch.optim.AdamW.",
        )
    import torch

    cls = getattr(torch.optim, name, None)
    if cls is None:  # a class this torch does not have yet (Adafactor before torch 2.5)
        raise GenlabError(f"Invalid config: {key}={target}: this torch has no {target}.")
    return cls


def check_optimizer_arguments(optimizer: Mapping[str, Any], key: str = "model.optimizer") -> type:
    """The optimizer class of a model.optimizer node; its other keys must be the class's
    arguments (`fused` is genlab's own key: models.base.build_optimizer resolves it)."""
    target = optimizer.get("_target_")
    cls = optimizer_class(target, f"{key}._target_")
    takes = [n for n in inspect.signature(cls).parameters if n != "params"]
    given = [k for k in optimizer if k not in ("_target_", "fused")]
    _unknown_arguments(key, str(target), given, takes)
    return cls


def has_fused_kernel(optimizer_class) -> bool:
    """Whether a torch.optim class takes `fused=` (torch 2.x: Adam, AdamW, SGD, Adagrad)."""
    return "fused" in inspect.signature(optimizer_class).parameters


def require_fused_optimizer(target: str) -> None:
    """Refuse model.optimizer.fused=true for an optimizer class without a fused kernel."""
    if not has_fused_kernel(optimizer_class(target)):
        raise GenlabError(
            f"Invalid config: model.optimizer.fused=true, but {target} has no fused "
            "implementation (torch has them for Adam, AdamW, SGD, Adagrad). Set "
            "model.optimizer.fused=null (fused where available) or false."
        )


# Keys torch.optim.Adam / AdamW take: the default optimizer needs no torch import to check.
ADAM_KEYS = {"lr", "betas", "eps", "weight_decay", "amsgrad", "fused", "foreach", "maximize"}


def check_optimizer(optimizer: dict) -> None:
    """model.optimizer._target_ must be an optimizer genlab offers and its
    other keys its arguments (else the run fails in configure_optimizers, after the data is
    loaded)."""
    target = str(optimizer.get("_target_", ""))
    # `fused` is genlab's key, resolved by models.base.build_optimizer (null: where the class
    # has a fused kernel) and checked by require_fused_optimizer: not the class's argument.
    keys = {k for k in optimizer if k not in ("_target_", "fused")}
    if target in ("torch.optim.Adam", "torch.optim.AdamW") and keys <= ADAM_KEYS:
        return
    check_optimizer_arguments(optimizer)


# -- learning-rate schedules -----------------------------------------------------------------------
def scheduler_factory(target: Any, key: str = "scheduler._target_") -> Callable:
    """The factory or torch scheduler class `target` names (one of SCHEDULERS)."""
    if target not in SCHEDULERS:
        raise _refuse(
            key,
            target,
            f"one of {', '.join(SCHEDULERS)}",
            "Choose a schedule with scheduler=constant|warmup_constant|warmup_cosine|onecycle.",
        )
    module, name = target.rsplit(".", 1)
    if module == "genlab.schedules":
        from genlab import schedules

        return getattr(schedules, name)
    import torch

    return getattr(torch.optim.lr_scheduler, name)


def scheduler_partial(spec: Mapping[str, Any], key: str = "scheduler") -> Callable:
    """The schedule a `scheduler` config describes, as a partial to call with the optimizer
    (and total_steps where it takes them); every other key must be one of its arguments."""
    arguments = {k: v for k, v in spec.items() if k not in ("_target_", "_partial_")}
    target = spec.get("_target_")
    factory = scheduler_factory(target, f"{key}._target_")
    takes = [n for n in inspect.signature(factory).parameters if n != "optimizer"]
    _unknown_arguments(key, str(target), arguments, takes)
    return functools.partial(factory, **arguments)


def check_scheduler(cfg: Mapping[str, Any]) -> None:
    """A config's scheduler._target_ must be a schedule genlab offers (its arguments are checked
    when it is built: that needs torch, which checking a config does not import)."""
    scheduler = cfg.get("scheduler")
    target = scheduler.get("_target_") if isinstance(scheduler, Mapping) else None
    if target is not None and target not in SCHEDULERS:
        scheduler_factory(target)  # raises, naming the key and the choices


# -- models ----------------------------------------------------------------------------------------
def check_model_target(spec: Mapping[str, Any], key: str = "model") -> None:
    """A model config node's `name` is a model genlab knows (genlab.models.catalog) and its
    `_target_`, where it has one, that model's class. Torch-free (genlab.run_rules uses it)."""
    from genlab.models.catalog import MODEL_SPECS, REGISTER_HINT

    name = spec.get("name")
    if not isinstance(name, str) or name not in MODEL_SPECS:
        raise _refuse(
            f"{key}.name",
            name,
            f"one of {', '.join(MODEL_SPECS)}",
            f"Use model=NAME. {REGISTER_HINT}",
        )
    own = MODEL_SPECS[name].__dataclass_fields__["_target_"].default
    if spec.get("_target_", own) != own:
        raise _refuse(
            f"{key}._target_",
            spec.get("_target_"),
            f"{own} for {key}.name={name}",
            f"Choose the model with model={name} and leave {key}._target_ as it is.",
        )


# -- data ------------------------------------------------------------------------------------------
@functools.cache
def data_keys(name: str) -> frozenset[str]:
    """The keys of conf/data/<name>.yaml, with those every dataset shares (conf/_data_base_.yaml):
    read from genlab's own conf/, not composed (Hydra's compose takes a second)."""
    import yaml

    from genlab.composition import CONF_DIR

    keys: set[str] = set()
    for path in (CONF_DIR / "_data_base_.yaml", CONF_DIR / "data" / f"{name}.yaml"):
        keys |= set(yaml.safe_load(path.read_text())) - {"defaults"}
    return frozenset(keys)


def data_module(spec: Mapping[str, Any], seed: Any):
    """genlab.data.ImageDataModule of a `data` config node (resolved, plain values): `name`
    picks a dataset genlab reads (genlab.data.sources.LOADERS), whose keys are the only ones
    allowed."""
    from genlab.data.sources import LOADERS

    spec = dict(spec)
    target = spec.pop("_target_", DATA_MODULE)
    if target != DATA_MODULE:
        raise _refuse(
            "data._target_",
            target,
            DATA_MODULE,
            "Choose the data with data=<name>; data._target_ stays as conf/ sets it.",
        )
    name = spec.get("name")
    if not isinstance(name, str) or name not in LOADERS:
        raise _refuse("data.name", name, f"one of {', '.join(LOADERS)}", "Use data=NAME.")
    unknown = sorted(set(spec) - data_keys(name))
    if unknown:
        raise GenlabError(
            f"Invalid config: data.{unknown[0]} is not a key of data={name} (its keys: "
            f"{', '.join(sorted(data_keys(name) - {'_target_'}))})."
        )
    from genlab.data.module import ImageDataModule

    return ImageDataModule(seed=seed, **spec)

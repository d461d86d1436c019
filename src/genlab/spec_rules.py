"""The vocabulary of value rules, no flow: what a key accepts (`Rule`), the spec-field helper
that attaches one (`spec_key`), the common rules, the optimizer's defaults and rules, and the
helpers that read a key and refuse its value (`config_value`, `check_value`, `refuse_value`).

The model specs (their fields and their `check`), image_files, sample.py's options and
genlab.run_rules speak it; genlab.run_rules.validate_run_config is the one check that applies
the rules to a run's config. Split from genlab.specs (which re-exports the rules) so the model
specs stay one short file. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from genlab import GenlabError


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float: nan, inf and -inf are refused by every rule built on this."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_int_list(v: Any, minimum: int = 1, nonempty: bool = False) -> bool:
    """A list (YAML's or OmegaConf's) of integers >= minimum; nonempty: at least one."""
    if not isinstance(v, Sequence) or isinstance(v, str):
        return False
    return (len(v) > 0 or not nonempty) and all(is_int(i) and i >= minimum for i in v)


@dataclass(frozen=True)
class Rule:
    """What a key accepts: a predicate, the phrase an error shows, and an example fix."""

    ok: Callable[[Any], bool]
    accepted: str
    fix: str = ""


def spec_key(default: Any = dataclasses.MISSING, rule: Rule | None = None, **kw):
    """A spec field with its value rule (read by genlab.run_rules.validate_run_config)."""
    if isinstance(default, list | dict):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"rule": rule}, **kw)
    return field(default=default, metadata={"rule": rule}, **kw)


def one_of(*choices: str, text: str = "") -> Rule:
    return Rule(lambda v: v in choices, text or f"one of {', '.join(choices)}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
POSITIVE_INT = Rule(lambda v: is_int(v) and v >= 1, "an integer >= 1")
LATENT_DIM = Rule(POSITIVE_INT.ok, "an integer >= 1", "e.g. model.latent_dim=16.")
NON_NEGATIVE = Rule(lambda v: is_number(v) and v >= 0, "a number >= 0")
# Classifier-free guidance weight: far beyond ~20 it only saturates the images, and a huge one
# overflows float32 into NaN samples (sample.py's guidance_scale= has the same range).
GUIDANCE = Rule(lambda v: is_number(v) and 0 <= v <= 100, "a number in [0, 100]")
UNIT_INTERVAL = Rule(lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
UNIT_INTERVAL_OPEN_RIGHT = Rule(lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")


# logger.wandb.mode (genlab.loggers): auto = online with an API key, else offline.
WANDB_MODES = ("auto", "online", "offline", "disabled")


def config_value(cfg, key: str, default: Any = "__missing__") -> Any:
    """The value of the dotted `key` in a config (`default` where it has none)."""
    return OmegaConf.select(cfg, key, default=default, throw_on_missing=False)


def refuse_value(key: str, value: Any, accepted: str, fix: str = "") -> None:
    shown = f"'{value}' ({type(value).__name__})" if isinstance(value, str) else repr(value)
    raise GenlabError(
        f"Invalid config: {key}={shown}. {key} must be {accepted}."
        + (f" {fix}" if fix else f" Fix it on the command line, e.g. `{key}=...`.")
    )


def check_value(cfg, key: str, ok: Callable[[Any], bool], accepted: str, fix: str = "") -> None:
    """Refuse the value of `key` in `cfg` unless `ok` accepts it (a key it lacks is left alone)."""
    value = config_value(cfg, key)
    if value == "__missing__":
        return
    if not ok(value):
        refuse_value(key, value, accepted, fix)


# torch.optim.<name>: the optimizers that take (params, **numbers) and step without a closure.
OPTIMIZERS = (
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "ASGD",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
)


def _offered_optimizer(target: Any) -> bool:
    return isinstance(target, str) and target in {f"torch.optim.{n}" for n in OPTIMIZERS}


DEFAULT_OPTIMIZER = {
    "_target_": "torch.optim.Adam",  # any torch.optim class
    "lr": 1e-3,  # learning rate; > 0
    "weight_decay": 0.0,  # L2 penalty
    # One fused update kernel: null = where the class has one (Adam, AdamW, SGD, Adagrad;
    # 1.1-1.5x faster CPU steps) outside mixed precision; true = required; false = torch's.
    "fused": None,
}
# The optimizer is a free-form node (any torch.optim class takes its own keys); its two shared
# keys are checked by name.
OPTIMIZER_RULES = {
    # Only the classes of OPTIMIZERS (an export's or a config's string is never
    # imported as it stands).
    "_target_": Rule(
        lambda v: _offered_optimizer(v),
        "a torch.optim class genlab offers (genlab.registry.OPTIMIZERS)",
        "e.g. model.optimizer._target_=torch.optim.AdamW.",
    ),
    "lr": Rule(lambda v: is_number(v) and v > 0, "a number > 0", "e.g. model.optimizer.lr=1e-3."),
    "fused": Rule(
        lambda v: v is None or isinstance(v, bool),
        "true, false or null (fused where the optimizer has it)",
    ),
    # What torch.optim refuses with a ValueError only when the optimizer is built, after the
    # data is loaded.
    "weight_decay": Rule(NON_NEGATIVE.ok, "a number >= 0", "e.g. model.optimizer.weight_decay=0."),
    "eps": Rule(NON_NEGATIVE.ok, "a number >= 0"),
    "momentum": Rule(NON_NEGATIVE.ok, "a number >= 0"),
    "betas": Rule(
        lambda v: (
            isinstance(v, Sequence)
            and not isinstance(v, str)
            and len(v) == 2
            and all(is_number(b) and 0 <= b < 1 for b in v)
        ),
        "two numbers in [0, 1)",
        "e.g. model.optimizer.betas=[0.9,0.999].",
    ),
}

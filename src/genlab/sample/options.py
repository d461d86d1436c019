"""The options of `sample.py` (conf/sample.yaml): their defaults, their checks (before torch is
imported, so bad input fails fast) and the device they name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab import GenlabError
from genlab.composition import CONF_DIR
from genlab.sampler_rules import OPTION_RULES, invalid
from genlab.specs import is_int, is_number

# Upper end of a range: a latent traversal far outside the prior decodes nothing the model
# learned, and a huge one overflows float32 into NaN images.
MAX_TRAVERSE = 100


def _sampler_check(key: str) -> tuple[str, Callable[[Any], bool], str]:
    # sampler, steps, eta, guidance_scale: the values plan_sampling accepts (the API's too)
    return key, OPTION_RULES[key].ok, OPTION_RULES[key].accepted


def check_label(label: int, num_classes: int) -> None:
    """Refuse a `label=` outside the model's classes."""
    if label >= num_classes:
        raise invalid("label", label, f"a class index in 0..{num_classes - 1}")


def check_options(opts: DictConfig, tasks) -> None:
    """Raise GenlabError on the first bad option, before torch is even imported; `tasks` are
    the task names there are."""
    if OmegaConf.is_missing(opts, "run") or not opts.get("run"):
        raise GenlabError(
            "No run given: pass run=<run dir> (the folder holding config.yaml and "
            "checkpoints/) or run=<path to a .ckpt file>."
        )
    task = opts.get("task")
    if task not in tasks:
        raise invalid("task", task, f"one of {', '.join(tasks)}")
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("n", lambda v: v is None or (is_int(v) and v >= 1), "an integer >= 1 (or null)"),
        ("seed", lambda v: is_int(v) and 0 <= v < 2**63, "an integer >= 0"),
        ("batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        _sampler_check("steps"),
        (
            "frames",
            lambda v: is_int(v) and v >= 2,
            "an integer >= 2 for task=interpolate (both ends are shown)",
        ),
        ("mode", lambda v: v is None or v in ("linear", "slerp"), "one of linear, slerp (or null)"),
        _sampler_check("sampler"),
        _sampler_check("eta"),
        _sampler_check("guidance_scale"),
        ("strip_steps", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        ("overwrite", lambda v: isinstance(v, bool), "true or false"),
        (
            "traverse_range",
            lambda v: is_number(v) and 0 < v <= MAX_TRAVERSE,
            f"a number in (0, {MAX_TRAVERSE}] (prior standard deviations)",
        ),
        ("label", lambda v: v is None or (is_int(v) and v >= 0), "a class index >= 0 or null"),
        ("max_images", lambda v: v is None or (is_int(v) and v >= 2), "an integer >= 2 or null"),
        (
            "device",
            lambda v: (
                isinstance(v, str)
                and (v in ("auto", "cpu", "cuda", "mps") or v.startswith("cuda:"))
            ),
            "one of auto, cpu, cuda, cuda:N, mps",
        ),
    ]
    for key, ok, accepted in checks:
        if key in opts and not ok(opts[key]):
            raise invalid(key, opts[key], accepted)


def pick_device(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GenlabError(f"device={name} but no CUDA GPU is visible: use device=cpu or auto.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GenlabError("device=mps but MPS is not available here: use device=cpu or auto.")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise invalid("device", name, "one of auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise GenlabError(
            f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s)."
        )
    return device


def options(cfg: DictConfig | Mapping) -> DictConfig:
    """`cfg` over the defaults of conf/sample.yaml, so library callers may pass only the keys
    they set; a key that is not there is refused rather than silently ignored."""
    from omegaconf.errors import ConfigKeyError

    defaults = OmegaConf.load(CONF_DIR / "sample.yaml")
    for key in ("defaults", "hydra"):
        defaults.pop(key, None)
    OmegaConf.set_struct(defaults, True)
    try:
        return OmegaConf.merge(defaults, cfg)
    except ConfigKeyError as err:
        raise GenlabError(
            f"Unknown option {err.full_key!r}: sample.py takes {', '.join(defaults)}."
        ) from None

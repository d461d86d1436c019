"""The value rules of the run's non-model keys (trainer, data, eval, top level), one per key,
and the helpers every check shares; genlab.config.validate applies them (model keys: the
rules live with their defaults in genlab.specs).

Torch-free: Lightning's names (strategies, accelerators, Trainer arguments) are copied here,
and tests/test_bad_inputs.py keeps them equal to Lightning's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab import GenlabError
from genlab.specs import Rule, is_int, is_number

_UNUSED = ("_find_unused_parameters_false", "_find_unused_parameters_true")
# Lightning 2.6's StrategyRegistry names and accelerators (tests/test_bad_inputs.py keeps them
# equal to Lightning's), checked here so a typo fails before torch and Lightning are imported.
STRATEGIES = (
    "auto",
    *(f"ddp{v}{f}" for v in ("", "_fork", "_notebook", "_spawn") for f in ("", *_UNUSED)),
    *("deepspeed", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload"),
    *("deepspeed_stage_3", "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme"),
    *("fsdp", "fsdp_cpu_offload", "single_device", "single_tpu", "single_xla", "xla", "xla_debug"),
)
# logger.wandb.mode (genlab.loggers): auto = online with an API key, else offline.
WANDB_MODES = ("auto", "online", "offline", "disabled")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
# lightning.pytorch.Trainer's arguments (the same test keeps them equal): a key Hydra lets in
# with +trainer.<key>= would otherwise fail as a TypeError inside Trainer(...).
TRAINER_KEYS = (
    *("_target_", "accelerator", "strategy", "devices", "num_nodes", "precision", "logger"),
    *("callbacks", "fast_dev_run", "max_epochs", "min_epochs", "max_steps", "min_steps"),
    *("max_time", "limit_train_batches", "limit_val_batches", "limit_test_batches"),
    *("limit_predict_batches", "overfit_batches", "val_check_interval"),
    *("check_val_every_n_epoch", "num_sanity_val_steps", "log_every_n_steps"),
    *("enable_checkpointing", "enable_progress_bar", "enable_model_summary"),
    *("accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm"),
    *("deterministic", "benchmark", "inference_mode", "use_distributed_sampler", "profiler"),
    *("detect_anomaly", "barebones", "plugins", "sync_batchnorm"),
    *("reload_dataloaders_every_n_epochs", "default_root_dir", "enable_autolog_hparams"),
    "model_registry",
)


def _int(low: int, text: str = "", none: bool = False) -> Rule:
    ok = lambda v: (none and v is None) or (is_int(v) and v >= low)  # noqa: E731
    return Rule(ok, text or f"an integer >= {low}" + (" (or null)" if none else ""))


def _flag(none: bool = False) -> Rule:
    return Rule(
        lambda v: isinstance(v, bool) or (none and v is None),
        "true or false" + (" (or null)" if none else ""),
    )


def _share_or_count(v: Any) -> bool:
    return v is None or (is_int(v) and v >= 0) or (is_number(v) and 0 <= v <= 1)


BATCHES = Rule(_share_or_count, "null, a share of batches in [0, 1] or a count >= 0")
# The value rules of the non-model keys, one per key (model keys: genlab.specs).
KEY_RULES: dict[str, Rule] = {
    "trainer.min_epochs": _int(0, none=True),
    "trainer.max_steps": _int(-1, "an integer >= 0, or -1 for no limit"),
    "trainer.min_steps": _int(0, none=True),
    "trainer.num_nodes": _int(1),
    "trainer.check_val_every_n_epoch": _int(1, none=True),
    "trainer.val_check_interval": Rule(
        lambda v: v is None or (is_int(v) and v >= 1) or (is_number(v) and 0 < v <= 1),
        "null, a share of the epoch in (0, 1] or a number of batches >= 1",
    ),
    "trainer.log_every_n_steps": _int(0),
    "trainer.num_sanity_val_steps": _int(-1, "an integer >= 0, or -1 for all"),
    "trainer.limit_train_batches": BATCHES,
    "trainer.limit_val_batches": BATCHES,
    "trainer.limit_test_batches": BATCHES,
    "trainer.gradient_clip_algorithm": Rule(
        lambda v: v in (None, "norm", "value"), "one of norm, value (or null)"
    ),
    "trainer.deterministic": Rule(
        lambda v: v in (None, "warn") or isinstance(v, bool), "true, false, warn or null"
    ),
    "trainer.benchmark": _flag(none=True),
    "trainer.enable_progress_bar": _flag(none=True),
    "trainer.enable_model_summary": _flag(none=True),
    "trainer.enable_checkpointing": _flag(none=True),
    "trainer.use_distributed_sampler": _flag(),
    "trainer.sync_batchnorm": _flag(),
    "data.split_seed": _int(0),
    "data.download": _flag(),
    "data.hflip": _flag(),
    "data.on_device": Rule(lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    "data.binarize": Rule(lambda v: v in (None, "dynamic", "static"), "null, dynamic or static"),
    "eval.sample_quality": _flag(),
    "eval.domain": _flag(),
    "eval.num_samples": _int(2),
    "eval.kid_subset_size": _int(1),
    "eval.batch_size": _int(1),
    "eval.iwae_k": _int(0),
    "eval.bound_images": _int(0, none=True),
    "logger.wandb.mode": Rule(lambda v: v in WANDB_MODES, f"one of {', '.join(WANDB_MODES)}"),
    # conf/scheduler/ (the keys each schedule has; a torch scheduler checks the rest itself).
    "scheduler.warmup_steps": _int(0),
    "scheduler.min_lr_ratio": Rule(lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "scheduler.pct_start": Rule(lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "test": _flag(),
    "save_images": _flag(),
    "previews.keep": _int(0),
}


def config_value(cfg: DictConfig, key: str, default: Any = "__missing__") -> Any:
    value = OmegaConf.select(cfg, key, default=default, throw_on_missing=False)
    return value


def refuse_value(key: str, value: Any, accepted: str, fix: str = "") -> None:
    shown = f"'{value}' ({type(value).__name__})" if isinstance(value, str) else repr(value)
    raise GenlabError(
        f"Invalid config: {key}={shown}. {key} must be {accepted}."
        + (f" {fix}" if fix else f" Fix it on the command line, e.g. `{key}=...`.")
    )


def check_value(cfg, key: str, ok: Callable[[Any], bool], accepted: str, fix: str = "") -> None:
    value = config_value(cfg, key)
    if value == "__missing__":
        return
    if not ok(value):
        refuse_value(key, value, accepted, fix)


def validate_trainer(cfg: DictConfig, local: bool) -> None:
    """trainer.* keys Lightning's Trainer takes, its strategy and accelerator (local: the run
    happens here, so the accelerator must be present)."""
    import importlib.util

    unknown = sorted(set(cfg.get("trainer") or {}) - set(TRAINER_KEYS))
    if unknown:
        raise GenlabError(
            f"Invalid config: trainer.{unknown[0]} is not an argument of Lightning's Trainer. "
            f"Drop +trainer.{unknown[0]}= (the Trainer's arguments: "
            f"{', '.join(TRAINER_KEYS[1:])})."
        )
    strategy = config_value(cfg, "trainer.strategy", "auto")
    if not isinstance(strategy, dict | DictConfig) and strategy not in STRATEGIES:
        named = [s for s in STRATEGIES if "_find_" not in s and "stage" not in s]
        refuse_value("trainer.strategy", strategy, f"one of {', '.join(named)} (Lightning's names)")
    needs = {"deepspeed": "deepspeed", "xla": "torch_xla", "tpu": "torch_xla"}
    for word, package in needs.items():
        if isinstance(strategy, str) and word in strategy and not importlib.util.find_spec(package):
            raise GenlabError(f"trainer.strategy={strategy} needs {package}: pip install it.")
    accelerator = config_value(cfg, "trainer.accelerator", "auto")
    if accelerator not in ACCELERATORS:
        refuse_value("trainer.accelerator", accelerator, f"one of {', '.join(ACCELERATORS)}")
    if local and accelerator not in ("auto", "cpu") and not _accelerator_here(accelerator):
        raise GenlabError(
            f"trainer.accelerator={accelerator}, but this machine has no {accelerator.upper()} "
            "that torch can use. Use trainer.accelerator=cpu (or auto: a GPU when there is one)."
        )


def _accelerator_here(accelerator: str) -> bool:
    import importlib.util

    if accelerator == "tpu":
        return importlib.util.find_spec("torch_xla") is not None
    import torch  # only for an accelerator named on purpose

    if accelerator == "mps":
        return torch.backends.mps.is_available()
    return torch.cuda.is_available()

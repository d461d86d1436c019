"""The one check of a run's config: `validate_run_config(cfg)` runs every rule before
anything heavy is built; each entry point calls it once (docs/architecture.md, "Where a config
is validated"). Hydra already rejects unknown group options and keys. Applied here: each model
key's value rule (with its default in the model's spec) and each other key's (`KEY_RULES`),
Lightning's Trainer arguments, strategy and accelerator, the model's rules across its keys (its
spec's `check`, called here only), the rules that span keys (guidance needs a conditional
model, a fused optimizer with clipping under mixed precision, ...), and what a run reads from
disk or needs of the machine (ckpt_path, memory: genlab.resources). Each failure is a
GenlabError naming the key, the value given, what is accepted and the fix.

Torch-free at import: Lightning's names (strategies, accelerators, Trainer arguments) are
copied here, and tests/test_bad_inputs.py keeps them equal to Lightning's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from genlab import GenlabError
from genlab.composition import retired_key_message
from genlab.image_files import check_config as check_image_folder
from genlab.models.catalog import MODEL_SPECS, PLUGINS, unknown_model
from genlab.registry import (
    check_model_target,
    check_optimizer,
    check_scheduler,
    require_fused_optimizer,
)
from genlab.rundir import check_run_name
from genlab.secrets import check_wandb_online
from genlab.spec_rules import WANDB_MODES, check_value, config_value, refuse_value
from genlab.specs import (
    NESTED,
    Rule,
    ints,
    is_int,
    is_int_list,
    is_number,
    unknown_keys,
    user_keys,
    violations,
)

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


PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "64-true")


def validate_run_config(cfg: DictConfig, local: bool = True, starting: bool = True) -> None:
    """Raise GenlabError on the first invalid setting, before any data or model is built.
    local: the run happens on this machine (not on a cluster's nodes), so its accelerator must
    be here; starting: the config is about to run, so its ckpt_path must hold a checkpoint (not
    so for a finished run's config.yaml, read by sample.py)."""
    name = config_value(cfg, "model.name", None)
    if not isinstance(name, str) or name not in MODEL_SPECS:
        raise GenlabError(f"Invalid config: model.name: {unknown_model(name)}")
    spec = MODEL_SPECS[name]

    check_value(
        cfg,
        "resume_changes",
        lambda v: v in ("refuse", "allow"),
        "refuse (stop when a resume asks for other settings) or allow (apply them)",
    )
    check_value(
        cfg,
        "seed",
        lambda v: v is None or (is_int(v) and 0 <= v < 2**32),
        "an integer in [0, 2**32) or null",
    )
    check_value(
        cfg,
        "plugins",
        lambda v: PLUGINS.ok(list(v) if isinstance(v, ListConfig) else v),
        PLUGINS.accepted,
        PLUGINS.fix,
    )
    _check_data_dir(cfg)
    # data=image_folder's keys and folder, before data.image_shape, which is derived from them.
    check_image_folder(cfg, starting)
    # Before the model's keys: model.image_shape is interpolated from it.
    check_value(
        cfg,
        "data.image_shape",
        lambda v: is_int_list(v) and len(v) == 3,
        "a list [channels, height, width] of positive integers",
    )
    # Each model key against its rule in the model's spec (genlab.specs): types and ranges.
    model = OmegaConf.to_container(cfg.model, resolve=True)
    unknown = unknown_keys(spec, model) or [
        f"{key}.{sub}"
        for key, spec in NESTED.items()
        if isinstance(model.get(key), dict)
        for sub in unknown_keys(spec, model[key])
    ]
    if unknown and retired_key_message(f"model.{unknown[0]}"):
        raise GenlabError(retired_key_message(f"model.{unknown[0]}"))
    if unknown:  # added with +model.<key>=...: the model would refuse it once data is loaded
        raise GenlabError(
            f"Invalid config: model.{unknown[0]} is not a key of model={name} "
            f"({spec.__module__}.{spec.__name__}). Its keys: "
            f"{', '.join(user_keys(spec))}. Drop +model.{unknown[0]}=."
        )
    check_model_target(model)
    check_optimizer(model.get("optimizer") or {})
    check_scheduler(cfg)
    for key, value, rule in violations(spec, model, "model"):
        refuse_value(key, value, rule.accepted, rule.fix)

    if config_value(cfg, "model.optimizer.fused", None) is True:
        require_fused_optimizer(str(config_value(cfg, "model.optimizer._target_", "")))
        precision = str(config_value(cfg, "trainer.precision", ""))
        clipping = config_value(cfg, "trainer.gradient_clip_val", None)
        if precision.endswith("-mixed") and clipping:
            raise GenlabError(
                f"Invalid config: model.optimizer.fused=true with trainer.precision={precision} "
                "and gradient clipping: Lightning cannot clip a fused optimizer's gradients "
                "under mixed precision. Set model.optimizer.fused=null (fused only where it "
                "works), or turn clipping off."
            )
    _validate_speed(cfg)

    check_value(cfg, "data.batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check_value(cfg, "data.eval_batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check_value(
        cfg, "data.val_fraction", lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"
    )

    model_shape = config_value(cfg, "model.image_shape", None)
    data_shape = config_value(cfg, "data.image_shape", None)
    if model_shape is not None and list(model_shape) != list(data_shape):
        raise GenlabError(
            f"Invalid config: model.image_shape={list(model_shape)} does not fit the data "
            f"({cfg.data.name} images are {list(data_shape)}). The model reads its input shape "
            "from the data config: drop the model.image_shape override."
        )

    spec.check(cfg, model)  # the model's own rules across its keys (its spec's `check`)

    check_value(
        cfg, "trainer.precision", lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}"
    )
    check_value(
        cfg,
        "trainer.max_epochs",
        lambda v: is_int(v) and (v >= 1 or v == -1),
        "an integer >= 1 (or -1 for no limit)",
    )
    check_value(
        cfg,
        "trainer.devices",
        lambda v: (
            v == "auto"
            or (is_int(v) and (v >= 1 or v == -1))
            or (isinstance(v, list | ListConfig) and len(v) > 0)
        ),
        "a positive integer, -1, 'auto' or a list of device indices",
    )
    check_value(
        cfg, "trainer.accumulate_grad_batches", lambda v: is_int(v) and v >= 1, "an integer >= 1"
    )
    check_value(
        cfg,
        "trainer.gradient_clip_val",
        lambda v: v is None or (is_number(v) and v > 0),
        "a number > 0, or null for no clipping",
    )
    validate_trainer(cfg, local)
    for key, rule in KEY_RULES.items():
        check_value(cfg, key, rule.ok, rule.accepted, rule.fix)
    _validate_eval(cfg)
    if starting:
        _validate_ckpt_path(cfg.get("ckpt_path"))
        for key in ("name", "sweep_name"):  # folder names: a run stays inside the run root
            if config_value(cfg, key) != "__missing__":
                check_run_name(key, config_value(cfg, key))
        _require_extras(cfg)
        check_wandb_online(config_value(cfg, "logger.wandb.mode", None))
    _validate_size(cfg, model)


def _require_extras(cfg: DictConfig) -> None:
    """The optional dependencies this run's loggers and test stage need (genlab.extras)."""
    from genlab.extras import require

    for key, logger in (config_value(cfg, "logger", None) or {}).items():
        if str((logger or {}).get("_target_", "")).endswith("TensorBoardLogger"):
            require("tensorboard", f"logger={key}")
    weights = config_value(cfg, "eval.inception_weights", None)
    if weights is not None and config_value(cfg, "eval.sample_quality", False):
        require("fid", f"eval.inception_weights={weights} (the Inception FID, KID and IS)")


def _check_data_dir(cfg: DictConfig) -> None:
    """paths.data_dir must be a folder (or not exist yet: downloads create it)."""
    value = config_value(cfg, "paths.data_dir", None)
    path = Path(str(value)).expanduser() if value not in (None, "") else None
    if path is None or not path.exists() or path.is_dir():
        return
    key = "paths.data_dir"
    if os.environ.get("GENLAB_DATA_DIR") and Path(os.environ["GENLAB_DATA_DIR"]) == Path(value):
        key = "GENLAB_DATA_DIR (paths.data_dir)"
    raise GenlabError(
        f"{key}={value} is a file, not a folder: point it at the folder that holds (or will "
        "hold) the datasets, e.g. GENLAB_DATA_DIR=~/data or paths.data_dir=./data."
    )


def _validate_speed(cfg: DictConfig) -> None:
    for key in ("speed.compile", "speed.channels_last"):
        check_value(cfg, key, lambda v: isinstance(v, bool), "true or false")
    if (
        config_value(cfg, "speed.channels_last", False) is True
        and config_value(cfg, "model.arch", None) == "mlp"
    ):
        raise GenlabError(
            "Invalid config: speed.channels_last=true, but model.arch=mlp has no convolutions "
            "for a memory layout to speed up. Use model.arch=conv, or speed.channels_last=false."
        )
    if config_value(cfg, "speed.compile", False) is True:
        import shutil

        import torch

        on_cpu = (
            config_value(cfg, "trainer.accelerator", "auto") == "cpu"
            or not torch.cuda.is_available()
        )
        compiler = os.environ.get("CXX") or next(
            (c for c in ("g++", "c++", "clang++") if shutil.which(c)), None
        )
        if on_cpu and not compiler:
            raise GenlabError(
                "speed.compile=true on a CPU needs a C++ compiler for torch.compile, and none "
                "was found (g++, c++, clang++ or $CXX). Install one (Debian: apt install g++) "
                "or set speed.compile=false."
            )


def _validate_eval(cfg: DictConfig) -> None:
    num, kid = (
        config_value(cfg, "eval.num_samples", None),
        config_value(cfg, "eval.kid_subset_size", None),
    )
    if is_int(num) and is_int(kid) and kid > num:
        raise GenlabError(
            f"Invalid config: eval.kid_subset_size={kid} is above eval.num_samples={num}: KID "
            f"draws subsets of the generated images. Use eval.kid_subset_size<={num}, or raise "
            "eval.num_samples."
        )
    weights = config_value(cfg, "eval.inception_weights", None)
    quality = config_value(cfg, "eval.sample_quality", False)
    if (
        weights is not None
        and quality
        and not (isinstance(weights, str) and os.path.isfile(weights))
    ):
        raise GenlabError(
            f"Invalid config: eval.inception_weights={weights} is not a file: give the path "
            "of torch-fidelity's InceptionV3 weights, or eval.inception_weights=null."
        )


def _validate_ckpt_path(ckpt: Any) -> None:
    """A ckpt_path that exists and holds torch checkpoints (`last` is this run's own dir, which a
    fresh run does not have yet; what a checkpoint holds is checked when it is loaded)."""
    from genlab.resources import checkpoint_problem

    if ckpt in (None, "", "last"):
        return
    how = "Give a .ckpt file written by `python train.py`, a run dir, or `last`."
    if not isinstance(ckpt, str):
        refuse_value("ckpt_path", ckpt, "the path of a .ckpt file, a run dir, or last", how)
    path = Path(ckpt)
    if path.is_dir():
        files = sorted((path / "checkpoints").glob("*.ckpt")) or sorted(path.glob("*.ckpt"))
        if not files:
            raise GenlabError(f"ckpt_path={ckpt}: no *.ckpt in {path} or {path}/checkpoints. {how}")
    elif path.exists():
        files = [path]
    else:
        raise GenlabError(f"ckpt_path={ckpt} does not exist. {how}")
    for file in files:
        problem = checkpoint_problem(file)
        if problem:
            raise GenlabError(
                f"ckpt_path={ckpt}: {file} is not a torch checkpoint: {problem}. {how}"
            )


def _validate_size(cfg: DictConfig, model: dict) -> None:
    """Refuse a model that cannot fit in this machine's memory, before it is allocated."""
    from genlab.resources import TRAIN_BYTES_PER_PARAMETER, refuse_if_too_big

    shape = ints(config_value(cfg, "data.image_shape", None))
    count, key = MODEL_SPECS[model["name"]].parameters_lower_bound(model, shape)
    refuse_if_too_big(
        count * TRAIN_BYTES_PER_PARAMETER,
        f"a {model.get('name')} of at least {count:,} parameters (weights, gradients and Adam's "
        "state)",
        f"{key}={config_value(cfg, key, '?')}",
        f"Use a smaller {key}.",
    )

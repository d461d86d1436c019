"""Checks on the composed config, run before anything heavy is built.

Hydra already rejects unknown group options and unknown keys. The value rules of model keys
live with their defaults in genlab.specs, those of the other groups' keys in genlab.run_rules;
this module applies them, checks what a run reads from disk or needs of the machine (ckpt_path,
the model's memory, genlab.resources) before anything is loaded or allocated, and holds the
rules that span several keys (a U-Net that fits the image size, guidance that needs a
conditional model, a fused optimizer with clipping under mixed precision).
Each failure is a GenlabError whose message names the key, the value given, what is accepted
and how to fix it.
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
from genlab.registry import check_model_target
from genlab.run_rules import KEY_RULES, check_value, config_value, refuse_value, validate_trainer
from genlab.rundir import check_run_name
from genlab.secrets import check_wandb_online
from genlab.specs import (
    NESTED,
    ints,
    is_int,
    is_int_list,
    is_number,
    unknown_keys,
    user_keys,
    violations,
)

PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "64-true")


def validate(cfg: DictConfig, local: bool = True, starting: bool = True) -> None:
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


def has_fused_kernel(optimizer_class) -> bool:
    """Whether a torch.optim class takes `fused=` (torch 2.x: Adam, AdamW, SGD, Adagrad)."""
    import inspect

    return "fused" in inspect.signature(optimizer_class).parameters


def require_fused_optimizer(target: str) -> None:
    """Refuse model.optimizer.fused=true for an optimizer class without a fused kernel."""
    from genlab.registry import optimizer_class

    if not has_fused_kernel(optimizer_class(target)):
        raise GenlabError(
            f"Invalid config: model.optimizer.fused=true, but {target} has no fused "
            "implementation (torch has them for Adam, AdamW, SGD, Adagrad). Set "
            "model.optimizer.fused=null (fused where available) or false."
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


# Keys torch.optim.Adam / AdamW take: the default optimizer needs no torch import to check.
ADAM_KEYS = {"lr", "betas", "eps", "weight_decay", "amsgrad", "fused", "foreach", "maximize"}


def check_optimizer(optimizer: dict) -> None:
    """model.optimizer._target_ must be an optimizer genlab offers (genlab.registry) and its
    other keys its arguments (else the run fails in configure_optimizers, after the data is
    loaded)."""
    target = str(optimizer.get("_target_", ""))
    # `fused` is genlab's key, resolved by models.base.build_optimizer (null: where the class
    # has a fused kernel) and checked by require_fused_optimizer: not the class's argument.
    keys = {k for k in optimizer if k not in ("_target_", "fused")}
    if target in ("torch.optim.Adam", "torch.optim.AdamW") and keys <= ADAM_KEYS:
        return
    from genlab.registry import check_optimizer_arguments

    check_optimizer_arguments(optimizer)


def check_scheduler(cfg: DictConfig) -> None:
    """scheduler._target_ must be a schedule genlab offers (its arguments are checked when it
    is built: that needs torch, which checking a config does not import)."""
    scheduler = cfg.get("scheduler")
    target = scheduler.get("_target_") if isinstance(scheduler, DictConfig) else None
    if target is not None:
        from genlab.registry import SCHEDULERS, scheduler_factory

        if target not in SCHEDULERS:
            scheduler_factory(target)  # raises, naming the key and the choices


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
    from pathlib import Path

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

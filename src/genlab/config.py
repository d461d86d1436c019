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
from genlab.registry import check_model_target
from genlab.run_rules import KEY_RULES, validate_trainer
from genlab.run_rules import check_value as _check
from genlab.run_rules import config_value as _get
from genlab.run_rules import refuse_value as _fail
from genlab.rundir import check_run_name
from genlab.secrets import check_wandb_online
from genlab.specs import (
    MODEL_SPECS,
    NESTED,
    is_int,
    is_int_list,
    is_number,
    unknown_keys,
    user_keys,
    violations,
)

PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "64-true")
MODELS = tuple(MODEL_SPECS)


def validate(cfg: DictConfig, local: bool = True, starting: bool = True) -> None:
    """Raise GenlabError on the first invalid setting, before any data or model is built.
    local: the run happens on this machine (not on a cluster's nodes), so its accelerator must
    be here; starting: the config is about to run, so its ckpt_path must hold a checkpoint (not
    so for a finished run's config.yaml, read by sample.py)."""
    name = _get(cfg, "model.name", None)
    if name not in MODELS:
        _fail("model.name", name, f"one of {', '.join(MODELS)} (chosen with model=NAME)")

    _check(
        cfg,
        "resume_changes",
        lambda v: v in ("refuse", "allow"),
        "refuse (stop when a resume asks for other settings) or allow (apply them)",
    )
    _check(
        cfg,
        "seed",
        lambda v: v is None or (is_int(v) and 0 <= v < 2**32),
        "an integer in [0, 2**32) or null",
    )
    _check_data_dir(cfg)
    # data=image_folder's keys and folder, before data.image_shape, which is derived from them.
    check_image_folder(cfg, starting)
    # Before the model's keys: model.image_shape is interpolated from it.
    _check(
        cfg,
        "data.image_shape",
        lambda v: is_int_list(v) and len(v) == 3,
        "a list [channels, height, width] of positive integers",
    )
    # Each model key against its rule in the model's spec (genlab.specs): types and ranges.
    model = OmegaConf.to_container(cfg.model, resolve=True)
    unknown = unknown_keys(MODEL_SPECS[name], model) or [
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
            f"(genlab.specs.{MODEL_SPECS[name].__name__}). Its keys: "
            f"{', '.join(user_keys(MODEL_SPECS[name]))}. Drop +model.{unknown[0]}=."
        )
    check_model_target(model)
    check_optimizer(model.get("optimizer") or {})
    check_scheduler(cfg)
    for key, value, rule in violations(MODEL_SPECS[name], model, "model"):
        _fail(key, value, rule.accepted, rule.fix)
    if model.get("iwae_k_train", 1) > 1 and (model["beta"] != 1 or model["reduction"] != "sum"):
        raise GenlabError(
            f"Invalid config: model.iwae_k_train={model['iwae_k_train']} trains on the IWAE "
            "bound, which has no KL term to weight or per-pixel mean: it needs model.beta=1 "
            f"and model.reduction=sum (got beta={model['beta']}, reduction={model['reduction']})."
            " Set both, or model.iwae_k_train=1 for the (beta-)ELBO."
        )

    if _get(cfg, "model.optimizer.fused", None) is True:
        require_fused_optimizer(str(_get(cfg, "model.optimizer._target_", "")))
        precision = str(_get(cfg, "trainer.precision", ""))
        clipping = _get(cfg, "trainer.gradient_clip_val", None)
        if precision.endswith("-mixed") and clipping:
            raise GenlabError(
                f"Invalid config: model.optimizer.fused=true with trainer.precision={precision} "
                "and gradient clipping: Lightning cannot clip a fused optimizer's gradients "
                "under mixed precision. Set model.optimizer.fused=null (fused only where it "
                "works), or turn clipping off."
            )
    _validate_speed(cfg)

    _check(cfg, "data.batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _check(cfg, "data.eval_batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _check(cfg, "data.val_fraction", lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")

    model_shape = _get(cfg, "model.image_shape", None)
    data_shape = _get(cfg, "data.image_shape", None)
    if model_shape is not None and list(model_shape) != list(data_shape):
        raise GenlabError(
            f"Invalid config: model.image_shape={list(model_shape)} does not fit the data "
            f"({cfg.data.name} images are {list(data_shape)}). The model reads its input shape "
            "from the data config: drop the model.image_shape override."
        )

    if name in ("ddpm", "latent_ddpm"):
        _validate_ddpm(cfg, pixels=name == "ddpm")
    if name == "cvae" and model.get("guidance_scale") and not model.get("label_dropout"):
        raise GenlabError(
            f"Invalid config: model.guidance_scale={model['guidance_scale']} compares the CVAE's "
            "decoder with and without the label, but with model.label_dropout=0 it never learns "
            "without one: keep model.label_dropout=0.1 (the default), or set "
            "model.guidance_scale=0 for plain samples."
        )

    _check(
        cfg, "trainer.precision", lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}"
    )
    _check(
        cfg,
        "trainer.max_epochs",
        lambda v: is_int(v) and (v >= 1 or v == -1),
        "an integer >= 1 (or -1 for no limit)",
    )
    _check(
        cfg,
        "trainer.devices",
        lambda v: (
            v == "auto"
            or (is_int(v) and (v >= 1 or v == -1))
            or (isinstance(v, list | ListConfig) and len(v) > 0)
        ),
        "a positive integer, -1, 'auto' or a list of device indices",
    )
    _check(
        cfg, "trainer.accumulate_grad_batches", lambda v: is_int(v) and v >= 1, "an integer >= 1"
    )
    _check(
        cfg,
        "trainer.gradient_clip_val",
        lambda v: v is None or (is_number(v) and v > 0),
        "a number > 0, or null for no clipping",
    )
    validate_trainer(cfg, local)
    for key, rule in KEY_RULES.items():
        _check(cfg, key, rule.ok, rule.accepted, rule.fix)
    _validate_eval(cfg)
    if starting:
        _validate_ckpt_path(cfg.get("ckpt_path"))
        for key in ("name", "sweep_name"):  # folder names: a run stays inside the run root
            if _get(cfg, key) != "__missing__":
                check_run_name(key, _get(cfg, key))
        _require_extras(cfg)
        check_wandb_online(_get(cfg, "logger.wandb.mode", None))
    _validate_size(cfg, model)


def _require_extras(cfg: DictConfig) -> None:
    """The optional dependencies this run's loggers and test stage need (genlab.extras)."""
    from genlab.extras import require

    for key, logger in (_get(cfg, "logger", None) or {}).items():
        if str((logger or {}).get("_target_", "")).endswith("TensorBoardLogger"):
            require("tensorboard", f"logger={key}")
    weights = _get(cfg, "eval.inception_weights", None)
    if weights is not None and _get(cfg, "eval.sample_quality", False):
        require("fid", f"eval.inception_weights={weights} (the Inception FID, KID and IS)")


def _check_data_dir(cfg: DictConfig) -> None:
    """paths.data_dir must be a folder (or not exist yet: downloads create it)."""
    value = _get(cfg, "paths.data_dir", None)
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
        _check(cfg, key, lambda v: isinstance(v, bool), "true or false")
    if _get(cfg, "speed.channels_last", False) is True and _get(cfg, "model.arch", None) == "mlp":
        raise GenlabError(
            "Invalid config: speed.channels_last=true, but model.arch=mlp has no convolutions "
            "for a memory layout to speed up. Use model.arch=conv, or speed.channels_last=false."
        )
    if _get(cfg, "speed.compile", False) is True:
        import shutil

        import torch

        on_cpu = _get(cfg, "trainer.accelerator", "auto") == "cpu" or not torch.cuda.is_available()
        compiler = os.environ.get("CXX") or next(
            (c for c in ("g++", "c++", "clang++") if shutil.which(c)), None
        )
        if on_cpu and not compiler:
            raise GenlabError(
                "speed.compile=true on a CPU needs a C++ compiler for torch.compile, and none "
                "was found (g++, c++, clang++ or $CXX). Install one (Debian: apt install g++) "
                "or set speed.compile=false."
            )


def _validate_ddpm(cfg: DictConfig, pixels: bool = True) -> None:
    timesteps = cfg.model.timesteps
    if _get(cfg, "model.schedule", None) == "linear" and timesteps <= 20:
        raise GenlabError(
            f"Invalid config: model.timesteps={timesteps} with model.schedule=linear. The linear "
            "schedule scales its betas by 1000/T, so T <= 20 gives beta_T >= 1. Use "
            "model.timesteps > 20, or model.schedule=cosine."
        )
    _check(
        cfg,
        "model.sample_steps",
        lambda v: v is None or (is_int(v) and 1 <= v <= timesteps),
        f"an integer between 1 and model.timesteps={timesteps}",
        f"Use {timesteps} for ancestral sampling or fewer (e.g. 50) for DDIM.",
    )
    if _get(cfg, "model.guidance_scale", 0) and not _get(cfg, "model.conditional", False):
        raise GenlabError(
            f"Invalid config: model.guidance_scale={cfg.model.guidance_scale} needs a "
            "class-conditional model: add model.conditional=true, or set model.guidance_scale=0."
        )
    if not pixels:  # a latent DDPM's U-Net fits its latent grid: checked once that is known
        return
    mults = _get(cfg, "model.unet.channel_mults", [1])
    _, height, width = cfg.data.image_shape
    factor = 2 ** (len(mults) - 1)
    if height != width or height % factor:
        raise GenlabError(
            f"Invalid config: the U-Net with model.unet.channel_mults={list(mults)} halves the "
            f"image {len(mults) - 1} times, so the image size must be square and divisible by "
            f"{factor}, but {cfg.data.name} images are {height}x{width}. Use fewer levels "
            f"(e.g. model.unet.channel_mults=[1,2,2] for 28x28)."
        )
    sizes = [height // 2**i for i in range(len(mults))]
    _check(
        cfg,
        "model.unet.attn_resolutions",
        lambda v: isinstance(v, list | ListConfig) and all(r in sizes for r in v),
        f"a list drawn from the U-Net's feature-map sizes {sizes}",
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
    num, kid = _get(cfg, "eval.num_samples", None), _get(cfg, "eval.kid_subset_size", None)
    if is_int(num) and is_int(kid) and kid > num:
        raise GenlabError(
            f"Invalid config: eval.kid_subset_size={kid} is above eval.num_samples={num}: KID "
            f"draws subsets of the generated images. Use eval.kid_subset_size<={num}, or raise "
            "eval.num_samples."
        )
    weights = _get(cfg, "eval.inception_weights", None)
    quality = _get(cfg, "eval.sample_quality", False)
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
        _fail("ckpt_path", ckpt, "the path of a .ckpt file, a run dir, or last", how)
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
    from genlab.resources import TRAIN_BYTES_PER_PARAMETER, model_parameters, refuse_if_too_big

    count, key = model_parameters(model, _get(cfg, "data.image_shape", None))
    refuse_if_too_big(
        count * TRAIN_BYTES_PER_PARAMETER,
        f"a {model.get('name')} of at least {count:,} parameters (weights, gradients and Adam's "
        "state)",
        f"{key}={_get(cfg, key, '?')}",
        f"Use a smaller {key}.",
    )

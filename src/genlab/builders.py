"""What a run is built from, each piece from its own config subtree: the datamodule, the model,
the callbacks (`CallbackPlan`), the trainer; and what a run writes at its end (images,
metrics.json, config.yaml). Shared by the flows above it: training (`genlab.training`) and
`evaluate=` (`genlab.evaluate`); the sample tasks' data and the sweep's metric names use it too.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab.atomic import write_text_atomic
from genlab.registry import check_model_target, data_module  # never a class a config names
from genlab.rundir import write_hydra_records
from genlab.secrets import redact


def build_datamodule(cfg: DictConfig):
    return data_module(OmegaConf.to_container(cfg.data, resolve=True), cfg.get("seed"))


def model_class(spec: Mapping[str, Any], key: str = "model") -> type:
    """The model class of a model config node (genlab.models.model_class: a model genlab does
    not know is refused with the way to register it), its `name` and `_target_` checked by
    check_model_target."""
    from genlab.models import model_class as class_of

    check_model_target(spec, key)
    return class_of(spec["name"])


def build_model(cfg: DictConfig):
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    cls = model_class(spec)
    spec.pop("_target_", None)
    model = cls(**spec)
    # The learning-rate schedule (conf/scheduler/): built in configure_optimizers.
    scheduler = cfg.get("scheduler")
    model.scheduler_cfg = OmegaConf.to_container(scheduler, resolve=True) if scheduler else None
    return model


@dataclass(frozen=True)
class CallbackPlan:
    """What `build_callbacks` needs, each piece taken by `callback_plan` from its own config
    subtree (or from the model's capabilities), so no builder reads the whole run config."""

    configured: dict[str, Any]  # cfg.callbacks, resolved; a null entry is switched off
    checkpoint_dir: Path  # <run dir>/checkpoints
    validates: bool  # the data has a validation split (else no metric to monitor)
    ema: dict[str, float] | None = None  # EMA(**ema) from the model's ema_* keys, or none
    sample_quality: dict[str, Any] | None = None  # SampleQuality(**...) after testing, or none
    run_config: dict[str, Any] | None = None  # kept in every checkpoint (TrainedConfig)
    progress_bar: bool = False  # trainer.enable_progress_bar: genlab's bar (no v_num)


def callback_plan(cfg: DictConfig, capabilities) -> CallbackPlan:
    """The callbacks of a run: cfg.callbacks, the model's EMA settings, and sample quality
    (eval.sample_quality) for a generative model whose test stage runs."""
    from genlab.metrics.quality import sample_quality_arguments

    evaluation = cfg.get("eval") or {}
    tests = bool(cfg.get("test", True))
    measured = bool(evaluation.get("sample_quality")) and capabilities.generative and tests
    return CallbackPlan(
        configured=OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=True),
        run_config=run_config(cfg),
        progress_bar=bool(cfg.trainer.get("enable_progress_bar", True)),
        checkpoint_dir=Path(cfg.paths.output_dir) / "checkpoints",
        validates=has_validation(cfg.data),
        ema=(
            {"decay": cfg.model.ema_decay, "power": cfg.model.ema_power}
            if cfg.model.get("ema_decay")
            else None
        ),
        sample_quality=(
            sample_quality_arguments(evaluation, dataset=cfg.data.name, data_dir=cfg.paths.data_dir)
            if measured
            else None
        ),
    )


def has_validation(data_cfg: DictConfig) -> bool:
    return data_cfg.get("val_fraction", 0.1) != 0


def build_callbacks(plan: CallbackPlan) -> list:
    """The configured callbacks plus genlab's own: RNG state in checkpoints (exact resume),
    a checkpoint on SIGTERM/SIGINT, and a stop at the first non-finite loss."""
    from hydra.utils import instantiate

    from genlab.callbacks import (
        EMA,
        CheckpointOnInterrupt,
        DivergenceGuard,
        LatestCheckpoint,
        RNGState,
        RunIdentity,
        RunRecords,
    )
    from genlab.checkpoints import TrainedConfig
    from genlab.progress import EvaluationProgress, progress_bars

    callbacks = []
    for spec in plan.configured.values():
        if spec is None:
            continue
        if not plan.validates and "monitor" in spec:
            spec = {**spec, "monitor": None}  # no validation split: keep the latest checkpoint
        callbacks.append(instantiate(spec))
    if plan.ema is not None:
        callbacks.append(EMA(**plan.ema))
    if plan.sample_quality is not None:
        from genlab.metrics.quality import SampleQuality

        callbacks.append(SampleQuality(**plan.sample_quality))
    return [
        *callbacks,
        *progress_bars(plan.configured, plan.progress_bar),
        EvaluationProgress(),  # test (and slow validation) progress as lines in train.log
        RNGState(),
        RunIdentity(),
        LatestCheckpoint(plan.checkpoint_dir),
        CheckpointOnInterrupt(plan.checkpoint_dir),
        DivergenceGuard(),
        RunRecords(),
        TrainedConfig(plan.run_config or {}),
    ]


def build_trainer(trainer_cfg: DictConfig, loggers: list, callbacks: list, validates: bool):
    """Lightning's Trainer from cfg.trainer, writing checkpoints atomically."""
    from hydra.utils import instantiate

    from genlab.checkpoints import AtomicCheckpointIO

    spec = OmegaConf.to_container(trainer_cfg, resolve=True)
    if not validates:
        spec["limit_val_batches"] = 0
    trainer = instantiate(
        spec, logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()]
    )
    slow = slow_cpu_precision(trainer)
    if slow:
        logging.getLogger("genlab").warning(slow)
    return trainer


def slow_cpu_precision(trainer) -> str | None:
    """A warning when bf16 runs on a CPU without bf16 instructions (AVX512-BF16 or AMX): there
    autocast emulates it and a step can take several times as long as in fp32."""
    import torch
    from lightning.pytorch.accelerators import CPUAccelerator

    if not str(trainer.precision).startswith("bf16"):
        return None
    if not isinstance(trainer.accelerator, CPUAccelerator):
        return None
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return None
    return (
        f"trainer.precision={trainer.precision} on a CPU without bf16 instructions (AVX512-BF16 "
        "or AMX): bf16 is emulated here and can train several times slower than fp32. Add "
        "trainer.precision=32-true unless you measured otherwise."
    )


def write_images(model, datamodule, output_dir: Path, n: int = 64, seed: int = 0) -> list[Path]:
    """samples.png (from the prior; not for an AE) and reconstructions.png (test images above
    their reconstructions; not for a DDPM) in the run dir."""
    import torch

    from genlab.viz.grids import originals_above_reconstructions, save_grid

    model.eval()
    written = []
    images, labels = datamodule.splits["test"]
    x = images[:n].to(model.device).float() / 255.0
    y = labels[:n].to(model.device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    if model.capabilities.generative:
        # 8 rows; conditional models: one class per column (genlab.viz.grids).
        count, columns = model.sample_grid(8)
        sample_labels = model.preview_labels(count)
        written.append(
            save_grid(
                model.sample(count, sample_labels, generator=generator),
                output_dir / "samples.png",
                nrow=columns,
            )
        )
    if model.capabilities.encoder:
        recon = originals_above_reconstructions(x, model.reconstruct(x, y), per_row=8)
        written.append(save_grid(recon, output_dir / "reconstructions.png", nrow=8))
    return written


def floats(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def metrics_table(metrics: dict[str, float]) -> str:
    """metrics.json as text: one aligned `name  value` line per metric, sorted by name."""
    width = max(map(len, metrics), default=0)
    return "\n".join(f"  {k:<{width}}  {metrics[k]:.6g}" for k in sorted(metrics))


@contextlib.contextmanager
def signals_as_interruption(guard):
    """Lightning ends a fit or test stopped by SIGTERM/SIGINT with SystemExit or
    KeyboardInterrupt; raise the TrainingInterrupted that `guard` (CheckpointOnInterrupt)
    recorded instead, which names the checkpoint and the exit code."""
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        if guard.interruption is not None:
            raise guard.interruption from None
        raise


def write_metrics(metrics: dict[str, float], output_dir: Path) -> Path:
    """metrics.json, replaced atomically (a reader never sees half of it)."""
    return write_text_atomic(
        output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True)
    )


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, secrets redacted: config.yaml, the loggers' and checkpoints' record."""
    return redact(OmegaConf.to_container(cfg, resolve=True))


def record_config(cfg: DictConfig, trainer, loggers: list, output_dir: Path) -> None:
    """config.yaml in the run dir and the loggers' run config: the resolved config, secrets
    redacted (the loggers without `paths`, which says nothing about the run).

    Into a dir that holds a run already (a resume in place), config.yaml and Hydra's records
    held back by genlab.cli.RunDirGuard are written only when training starts, after Lightning
    restored the checkpoint (RunRecords): a resume that fails leaves them as they were."""
    from genlab.callbacks import RunRecords

    run_config = redact(OmegaConf.to_container(cfg, resolve=True))
    for logger in loggers:
        logger.log_hyperparams({k: v for k, v in run_config.items() if k != "paths"})
    if not trainer.is_global_zero:
        return

    def write() -> None:
        write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(run_config))
        write_hydra_records(cfg)

    if (output_dir / "config.yaml").is_file():
        next(c for c in trainer.callbacks if isinstance(c, RunRecords)).pending = write
    else:
        write()

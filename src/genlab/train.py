"""Library entry point for training: `run(cfg)` builds everything from a composed config,
trains, tests the best checkpoint and writes the run's images and metrics.

The `train.py` script at the top of the repo is a thin Hydra wrapper around it; tests call it
directly with configs composed through Hydra's compose API.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab.config import validate

log = logging.getLogger("genlab")


def build_datamodule(cfg: DictConfig):
    from genlab.registry import data_module  # never a class a config names (docs/security.md)

    return data_module(OmegaConf.to_container(cfg.data, resolve=True), cfg.get("seed"))


def build_model(cfg: DictConfig):
    from genlab.registry import model_class

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
    return instantiate(
        spec, logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()]
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


def _floats(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _final(metrics: dict) -> dict[str, float]:
    """The run's results: epoch means and val/test values, without the single-step values that
    are only there as curves (a last `train/loss_step` read like a result beside the epoch mean).
    """
    from genlab.models.base import STEP_METRICS

    return {k: v for k, v in _floats(metrics).items() if k not in STEP_METRICS}


def metrics_table(metrics: dict[str, float]) -> str:
    """metrics.json as text: one aligned `name  value` line per metric, sorted by name."""
    width = max(map(len, metrics), default=0)
    return "\n".join(f"  {k:<{width}}  {metrics[k]:.6g}" for k in sorted(metrics))


@contextlib.contextmanager
def _signals_as_interruption(guard):
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
    from genlab.atomic import write_text_atomic

    return write_text_atomic(
        output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True)
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (and test) the model described by `cfg`; return the final metrics.

    Raises GenlabError for anything the user can fix (also when another live run writes into
    the same run dir: genlab.rundir), TrainingInterrupted after SIGTERM/SIGINT (a checkpoint
    has been written), TrainingDiverged on a non-finite loss or validation/test metric.
    """
    from genlab.rundir import check_run_dir, holding, is_rank_zero, resumes_in_place

    validate(cfg)
    if is_rank_zero():  # train.py's RunDirGuard checked already; the library's run(cfg) not
        in_place = resumes_in_place(cfg.get("ckpt_path"), cfg.paths.output_dir)
        new_run = not in_place and cfg.get("sweep_job") is None
        check_run_dir(cfg.paths.output_dir, new_run)
    with holding(cfg.paths.output_dir):  # already held when train.py's RunDirGuard took it
        if cfg.get("evaluate"):  # a checkpoint's metrics, no training: genlab.evaluate
            from genlab.evaluate import evaluate_checkpoint

            return evaluate_checkpoint(cfg)
        return _run(cfg)


def _run(cfg: DictConfig) -> dict[str, Any]:
    import lightning.pytorch as pl

    from genlab.console import quiet_known_warnings, tidy_lightning_logging

    tidy_lightning_logging()
    quiet_known_warnings()

    from genlab.dashboards import record_final
    from genlab.loggers import build_loggers, finish_loggers
    from genlab.rundir import recorded_metrics

    output_dir = Path(cfg.paths.output_dir)
    ckpt_path, resume = resume_point(cfg, output_dir)
    # A resume in place keeps the values of metrics.json that it does not measure again.
    earlier = recorded_metrics(output_dir) if resume.get("resumed") else {}
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()  # fails early (before the model or trainer) if data is missing
    model = build_model(cfg)
    model.apply_speed_switches(**(cfg.get("speed") or {}))
    keep = int((cfg.get("previews") or {}).get("keep", 0) or 0)
    if keep > 0:  # the grids sent to the loggers after each validation, as files too
        model.preview_dir, model.preview_keep = output_dir / "previews", keep
    loggers = build_loggers(cfg.get("logger"), **resume)
    try:
        callbacks = build_callbacks(callback_plan(cfg, model.capabilities))
        trainer = build_trainer(cfg.trainer, loggers, callbacks, has_validation(cfg.data))
        record_config(cfg, trainer, loggers, output_dir)
        test = bool(cfg.get("test", True))
        metrics = fit_and_test(trainer, model, datamodule, ckpt_path, output_dir, test, earlier)
        if trainer.is_global_zero:
            if cfg.get("save_images", True):
                datamodule.setup("test")
                for path in write_images(model, datamodule, output_dir, seed=cfg.get("seed") or 0):
                    log.info("wrote %s", path)
            write_metrics(metrics, output_dir)
            record_final(loggers, cfg, metrics, trainer.global_step)  # TensorBoard's HParams
            # Lightning's own table is off (verbose=False): this one shows every final number.
            log.info("final metrics (%s):\n%s", output_dir / "metrics.json", metrics_table(metrics))
        return metrics
    finally:
        finish_loggers(loggers)


def resume_point(cfg: DictConfig, output_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """The checkpoint of cfg.ckpt_path to resume from (checked against the run's config before
    anything is restored: genlab.checkpoints.check_compatible, which refuses changed settings
    unless resume_changes=allow) and what the loggers continue (build_loggers' keywords: the W&B
    run id it holds; for a resume in place, its path and step, where the CSV curve goes on)."""
    from genlab.callbacks import wandb_run_id_in
    from genlab.checkpoints import check_compatible, load_checkpoint, resolve_ckpt_path
    from genlab.rundir import resumes_in_place

    path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if not path:
        return None, {}
    checkpoint = load_checkpoint(path)
    allow = cfg.get("resume_changes", "refuse") == "allow"
    check_compatible(checkpoint, run_config(cfg), path, allow_changes=allow)
    # The W&B run continues wherever the training does; the CSV curve (and metrics.json) only
    # in its own dir.
    in_place = resumes_in_place(path, output_dir)
    resumed = (path, int(checkpoint.get("global_step", 0))) if in_place else None
    return path, {"wandb_resume_id": wandb_run_id_in(checkpoint), "resumed": resumed}


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, secrets redacted: config.yaml, the loggers' and checkpoints' record."""
    from genlab.secrets import redact

    return redact(OmegaConf.to_container(cfg, resolve=True))


def record_config(cfg: DictConfig, trainer, loggers: list, output_dir: Path) -> None:
    """config.yaml in the run dir and the loggers' run config: the resolved config, secrets
    redacted (the loggers without `paths`, which says nothing about the run).

    Into a dir that holds a run already (a resume in place), config.yaml and Hydra's records
    held back by genlab.cli.RunDirGuard are written only when training starts, after Lightning
    restored the checkpoint (RunRecords): a resume that fails leaves them as they were."""
    from genlab.atomic import write_text_atomic
    from genlab.callbacks import RunRecords
    from genlab.rundir import write_hydra_records
    from genlab.secrets import redact

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


def fit_and_test(
    trainer, model, datamodule, ckpt_path, output_dir: Path, test: bool, earlier: dict
) -> dict:
    """Fit (resuming from `ckpt_path`), then test the best checkpoint when `test` is set; the
    final metrics: `earlier` updated with what this run measured. A stop by SIGTERM/SIGINT
    raises TrainingInterrupted."""
    from genlab.callbacks import CheckpointOnInterrupt, TrainingInterrupted

    guard = next(c for c in trainer.callbacks if isinstance(c, CheckpointOnInterrupt))
    with _signals_as_interruption(guard):
        # weights_only=True: Lightning reads checkpoints as safely as genlab.checkpoints does.
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if trainer.interrupted:
        raise guard.interruption or TrainingInterrupted("signal", 1, None, trainer.global_step)
    metrics = {**earlier, **_final(trainer.callback_metrics)}
    if test:
        if trainer.is_global_zero:  # the training numbers are kept if testing is stopped
            write_metrics(metrics, output_dir)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        with _signals_as_interruption(guard):
            results = trainer.test(
                model, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True
            )
        metrics.update(_floats(results[0]) if results else {})
    return metrics


class _CallableModule(types.ModuleType):
    """`genlab.train(overrides)` is the library's training call (genlab.api.train). Python binds
    the package attribute `genlab.train` to this module once it is imported, over any function
    of that name, so the module itself takes the call; `genlab.train.run(cfg)` stays as it is."""

    def __call__(self, overrides=()):
        from genlab.api import train

        return train(overrides)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    # `python -m genlab.train ...` is genlab-train (and what a sweep's own-process job runs).
    from genlab.commands import train as _command

    _command()

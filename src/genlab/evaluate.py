"""Evaluate a checkpoint without training: `python train.py <the run's overrides>
evaluate=<checkpoint or run dir>`.

A new run dir gets the validation and test metrics of that checkpoint (metrics.json, the final
table, the loggers), its pictures and its config, computed by the same Lightning stages and
callbacks as the test stage after training (eval.* sizes, sample quality). The config must be
the one the checkpoint was trained with except for the keys of length and observation
(genlab.checkpoints.FREE_ON_RESUME, eval.* among them): a difference is refused by name, as a
resume refuses it, so the numbers belong to the model the overrides describe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genlab import GenlabError
from genlab.builders import (
    build_callbacks,
    build_datamodule,
    build_model,
    build_trainer,
    callback_plan,
    floats,
    has_validation,
    metrics_table,
    record_config,
    run_config,
    signals_as_interruption,
    write_images,
    write_metrics,
)
from genlab.console import quiet_known_warnings, tidy_lightning_logging
from genlab.untrusted import inside  # no checkpoint behind a link out of the run

log = logging.getLogger("genlab")


def checkpoint_to_evaluate(value: str) -> str:
    """A .ckpt file as it is; a run dir -> its best checkpoint (what its test stage used:
    checkpoints/epoch=*.ckpt, the newest of them), else its newest."""
    from genlab.checkpoints import newest_checkpoint

    folder = Path(value) / "checkpoints"
    best = sorted(folder.glob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    if Path(value).is_dir() and best:
        return str(inside(best[-1], Path(value), f"evaluate={value}"))
    if Path(value).is_file():
        return value
    found = newest_checkpoint(Path(value) / "checkpoints") or newest_checkpoint(Path(value))
    if found is None or value == "last":
        where = "holds no checkpoints" if Path(value).is_dir() else "does not exist"
        raise GenlabError(
            f"evaluate={value}: {value} {where}. Give a .ckpt file, or a run dir whose "
            "checkpoints/ holds one (a run that trained at least one epoch)."
        )
    return str(inside(found, Path(value), f"evaluate={value}"))


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    import lightning.pytorch as pl

    from genlab.callbacks import CheckpointOnInterrupt
    from genlab.checkpoints import load_checkpoint, trained_changes
    from genlab.dashboards import record_final
    from genlab.loggers import build_loggers, finish_loggers

    if cfg.get("ckpt_path"):
        raise GenlabError(
            f"evaluate={cfg.evaluate} and ckpt_path={cfg.ckpt_path} ask for two things: "
            "evaluate= scores a checkpoint without training, ckpt_path= resumes training. "
            "Drop one of them."
        )
    tidy_lightning_logging()
    quiet_known_warnings()
    path = checkpoint_to_evaluate(str(cfg.evaluate))
    # The model type and image shape are checked first; any other trained setting that
    # differs would score another model than the overrides describe.
    changes = trained_changes(load_checkpoint(path), run_config(cfg), path)
    if changes:
        raise GenlabError(
            f"evaluate={cfg.evaluate}: {path} was trained with other settings than these "
            f"overrides give: {'; '.join(changes)}. Give the overrides it was trained with (its "
            "run dir's config.yaml lists them); only eval.*, test, logger and the other keys "
            "of observation may differ."
        )
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    model = build_model(cfg)
    loggers = build_loggers(cfg.get("logger"), job_type="evaluate")
    try:
        callbacks = build_callbacks(callback_plan(cfg, model.capabilities))
        validates = has_validation(cfg.data)
        trainer = build_trainer(cfg.trainer, loggers, callbacks, validates)
        record_config(cfg, trainer, loggers, output_dir)
        guard = next(c for c in trainer.callbacks if isinstance(c, CheckpointOnInterrupt))
        log.info("Evaluating %s (no training)", path)
        metrics: dict[str, float] = {}
        stages = [trainer.validate] if validates else []
        for i, stage in enumerate([*stages, trainer.test]):
            # The first stage restores the checkpoint (weights and callback states, EMA's among
            # them); the next one goes on with them, without loading (and saying so) again.
            with signals_as_interruption(guard):
                results = stage(
                    model,
                    datamodule=datamodule,
                    ckpt_path=path if i == 0 else None,
                    verbose=False,
                    weights_only=True,
                )
            metrics.update(floats(results[0]) if results else {})
        if trainer.is_global_zero:
            if cfg.get("save_images", True):
                datamodule.setup("test")
                seed = cfg.get("seed") or 0
                for written in write_images(model, datamodule, output_dir, seed=seed):
                    log.info("wrote %s", written)
            write_metrics(metrics, output_dir)
            record_final(loggers, cfg, metrics, trainer.global_step)  # TensorBoard's HParams
            log.info("metrics of %s (%s):\n%s", path, output_dir / "metrics.json",
                     metrics_table(metrics))  # fmt: skip
        return metrics
    finally:
        finish_loggers(loggers)

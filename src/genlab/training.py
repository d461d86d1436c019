"""The training flow: `run(cfg)` builds everything from a composed config (genlab.builders),
trains, tests the best checkpoint and writes the run's images and metrics.

`python train.py` (genlab.commands.train) runs it through Hydra; `genlab.train(overrides)` from
Python (genlab.api.train); tests call it directly with configs composed through Hydra's compose
API.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

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
from genlab.run_rules import validate_run_config
from genlab.rundir import check_run_dir, holding, is_rank_zero, recorded_metrics, resumes_in_place

log = logging.getLogger("genlab")


def run(cfg: DictConfig, *, validated: bool = False) -> dict[str, Any]:
    """Train (and test) the model described by `cfg`; return the final metrics. validated:
    `cfg` has passed genlab.run_rules.validate_run_config already (the entry point's check:
    train.py's precheck, genlab.train), so it is not checked again; else it is checked here.

    Raises GenlabError for anything the user can fix (also when another live run writes into
    the same run dir: genlab.rundir), TrainingInterrupted after SIGTERM/SIGINT (a checkpoint
    has been written), TrainingDiverged on a non-finite loss or validation/test metric.
    """
    if not validated:
        validate_run_config(cfg)
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

    tidy_lightning_logging()
    quiet_known_warnings()

    from genlab.dashboards import record_final
    from genlab.loggers import build_loggers, finish_loggers

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


def _final(metrics: dict) -> dict[str, float]:
    """The run's results: epoch means and val/test values, without the single-step values that
    are only there as curves (a last `train/loss_step` read like a result beside the epoch mean).
    """
    from genlab.models.base import STEP_METRICS

    return {k: v for k, v in floats(metrics).items() if k not in STEP_METRICS}


def fit_and_test(
    trainer, model, datamodule, ckpt_path, output_dir: Path, test: bool, earlier: dict
) -> dict:
    """Fit (resuming from `ckpt_path`), then test the best checkpoint when `test` is set; the
    final metrics: `earlier` updated with what this run measured. A stop by SIGTERM/SIGINT
    raises TrainingInterrupted."""
    from genlab.callbacks import CheckpointOnInterrupt, TrainingInterrupted

    guard = next(c for c in trainer.callbacks if isinstance(c, CheckpointOnInterrupt))
    with signals_as_interruption(guard):
        # weights_only=True: Lightning reads checkpoints as safely as genlab.checkpoints does.
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if trainer.interrupted:
        raise guard.interruption or TrainingInterrupted("signal", 1, None, trainer.global_step)
    metrics = {**earlier, **_final(trainer.callback_metrics)}
    if test:
        if trainer.is_global_zero:  # the training numbers are kept if testing is stopped
            write_metrics(metrics, output_dir)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        with signals_as_interruption(guard):
            results = trainer.test(
                model, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True
            )
        metrics.update(floats(results[0]) if results else {})
    return metrics

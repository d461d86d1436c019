"""Callbacks every genlab run gets: exact resume, checkpoint on interruption, divergence stop."""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
from collections import deque
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities.exceptions import SIGTERMException

from genlab import GenlabError, interrupt

log = logging.getLogger("genlab")


class TrainingDiverged(GenlabError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(Exception):
    """SIGTERM / SIGINT stopped training after a checkpoint was written, or stopped the test
    stage after training had finished (its checkpoints are then complete already)."""

    def __init__(
        self,
        signal_name: str,
        exit_code: int,
        checkpoint: Path | None,
        step: int,
        stage: str = "fit",
        run_dir: Path | None = None,
    ):
        self.signal_name, self.exit_code, self.checkpoint, self.step, self.stage = (
            signal_name,
            exit_code,
            checkpoint,
            step,
            stage,
        )
        if stage == "test":
            message = (
                f"Interrupted by {signal_name} while testing, after training had finished "
                f"(step {step}); the checkpoints are complete. Evaluate again with "
                f"ckpt_path=last hydra.run.dir={run_dir or '<this run dir>'} (and the same "
                "trainer.max_epochs)."
            )
        else:
            where = f"checkpoint written to {checkpoint}" if checkpoint else "no checkpoint written"
            message = (
                f"Interrupted by {signal_name} at step {step}; {where}. Resume with "
                f"ckpt_path={checkpoint or 'last'}."
            )
        super().__init__(message)


class RNGState(pl.Callback):
    """Saves the global RNG states with each checkpoint and restores them on resume, so that a
    resumed run draws the same noise (reparameterisation, augmentation) as an uninterrupted one."""

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
        python = state["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class LatestCheckpoint(pl.Callback):
    """Rewrites `last.ckpt` at the end of every training epoch. (Lightning's ModelCheckpoint only
    refreshes its `last.ckpt` when the monitored metric improves, so a hard kill could resume
    from an old epoch.)"""

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            # A full checkpoint for resuming (optimizer, loops, callbacks); saying so also keeps
            # Lightning from printing its "weights_only was not set" notice at every save.
            trainer.save_checkpoint(self.dirpath / "last.ckpt", weights_only=False)


class RunRecords(pl.Callback):
    """Writes a resumed run's records (`pending`, set by genlab.builders.record_config for a dir
    that holds a run already) when training starts: after Lightning restored the checkpoint, so
    a resume that fails (a checkpoint that does not load) leaves the dir's records as they were.
    A run with nothing left to train (max_epochs reached) keeps them too."""

    def __init__(self):
        self.pending = None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.pending is not None:
            write, self.pending = self.pending, None
            write()


class RunIdentity(pl.Callback):
    """Keeps the W&B run id in checkpoints, so a resumed training continues the same W&B run."""

    def __init__(self):
        self.wandb_run_id: str | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                self.wandb_run_id = logger.version

    def state_dict(self) -> dict:
        return {"wandb_run_id": self.wandb_run_id}

    def load_state_dict(self, state: dict) -> None:
        self.wandb_run_id = self.wandb_run_id or state.get("wandb_run_id")


def wandb_run_id_in(checkpoint: dict) -> str | None:
    return ((checkpoint.get("callbacks") or {}).get("RunIdentity") or {}).get("wandb_run_id")


class CheckpointOnInterrupt(pl.Callback):
    """On SIGTERM (Slurm preemption, `kill`) or SIGINT (Ctrl-C), finish the current batch, write
    `last.ckpt` at that step and stop. Resuming from it continues at the next batch, bit for bit.

    SIGTERM is caught by Lightning's own signal handler; SIGINT is turned into the same graceful
    stop here (a second Ctrl-C aborts at once), because a KeyboardInterrupt lands at an arbitrary
    point inside a step and would leave no exact place to resume from.
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self.interruption: TrainingInterrupted | None = None
        self._sigint_seen = False
        self._previous_sigint = None

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._make_sigint_handler(trainer))

    def _make_sigint_handler(self, trainer):
        def handler(signum, frame):
            if self._sigint_seen:
                raise KeyboardInterrupt
            self._sigint_seen = True
            log.warning(
                "Ctrl-C: stopping after this batch and writing a checkpoint "
                "(press Ctrl-C again to abort without one)."
            )
            # Lightning's loops poll this flag at batch boundaries (private API, Lightning 2.6).
            trainer._signal_connector.received_sigterm = True

        return handler

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_sigint()

    # While testing, long loops inside one batch poll genlab.interrupt, so SIGTERM stops the
    # run within seconds instead of after the batch (test batches can take minutes on a CPU).
    def on_test_start(self, trainer, pl_module) -> None:
        interrupt.watch(lambda: trainer.received_sigterm, SIGTERMException)

    def on_test_end(self, trainer, pl_module) -> None:
        interrupt.unwatch()

    def on_exception(self, trainer, pl_module, exception) -> None:
        interrupt.unwatch()
        self._restore_sigint()
        if isinstance(exception, SIGTERMException):
            name, code = ("SIGINT", 130) if self._sigint_seen else ("SIGTERM", 143)
        elif isinstance(exception, KeyboardInterrupt):
            name, code = "SIGINT", 130
        else:
            return
        path = None
        if trainer.state.fn == "fit":
            path = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(path, weights_only=False)
        stage = "test" if trainer.state.fn == "test" else "fit"
        self.interruption = TrainingInterrupted(
            name, code, path, trainer.global_step, stage, run_dir=self.dirpath.parent
        )


class DivergenceGuard(pl.Callback):
    """Stops at the first non-finite training loss, and at a non-finite validation or test
    metric (a model can overflow on held-out data while its training loss stays finite), naming
    the step, the recent losses and the settings most likely to blame. It runs before Lightning's
    ModelCheckpoint at the end of validation (Lightning orders checkpoint callbacks last) and
    before `last.ckpt` (written at the end of the epoch, after validation), so no checkpoint of
    the bad state is written or marked best: the last good checkpoint is left as it was."""

    def __init__(self, history: int = 5):
        self.recent: deque[tuple[int, float]] = deque(maxlen=history)
        self.step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step = trainer.global_step  # the optimizer step this batch's loss belongs to

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        if math.isfinite(value):
            self.recent.append((self.step, value))
            return
        raise TrainingDiverged(
            f"Training diverged: the loss is {value} at step {self.step} "
            f"(epoch {trainer.current_epoch}, batch {batch_idx}). Losses just before: "
            f"{self._before() or 'none (first step)'}. {self._diagnosis(trainer, pl_module)}"
        )

    # callback_metrics hold the epoch's val/* (test/*) values only once the evaluation epoch has
    # ended, i.e. in on_validation_end / on_test_end (also during the sanity check, which then
    # stops a resumed run before its first step).
    def on_validation_end(self, trainer, pl_module) -> None:
        self._check_evaluation(trainer, pl_module, "val", "Validation")

    def on_test_end(self, trainer, pl_module) -> None:
        self._check_evaluation(trainer, pl_module, "test", "Testing")

    def _check_evaluation(self, trainer, pl_module, stage: str, what: str) -> None:
        bad = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(f"{stage}/") and not math.isfinite(float(v))
        }
        if not bad:
            return
        values = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        where = "sanity check before training" if trainer.sanity_checking else "evaluation"
        raise TrainingDiverged(
            f"{what} diverged: {values} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, {where}); no checkpoint of it was written. "
            f"Training losses just before: {self._before() or 'none'}. "
            f"{self._diagnosis(trainer, pl_module)}"
        )

    def _before(self) -> str:
        return ", ".join(f"step {s}: {v:.4g}" for s, v in self.recent)

    def _diagnosis(self, trainer, pl_module) -> str:
        """The suspects (each with a change to try, never the value the run already has) and the
        checkpoint that is kept."""
        hp = pl_module.hparams
        lr = (hp.get("optimizer") or {}).get("lr")
        suspects = [f"model.optimizer.lr={lr} (try 3-10x smaller)"] if lr else []
        if "beta" in hp:
            suspects.append(f"model.beta={hp['beta']}")
        # Only half precision overflows where 32-true does not (64-true is already safer).
        if "16" in str(trainer.precision):
            suspects.append(f"trainer.precision={trainer.precision} (try 32-true)")
        if not trainer.gradient_clip_val:
            suspects.append("trainer.gradient_clip_val=null (try 1.0)")
        latest = next((c for c in trainer.callbacks if isinstance(c, LatestCheckpoint)), None)
        last_ckpt = latest.dirpath / "last.ckpt" if latest else "none"
        if not Path(last_ckpt).is_file():
            last_ckpt = "none yet"
        return (
            f"Most likely to blame: {'; '.join(suspects)}. The last good checkpoint is kept: "
            f"{last_ckpt}."
        )


def ema_warmup_weight(num_averaged: torch.Tensor, decay: float, power: float) -> torch.Tensor:
    """How far the average moves towards the current weights at update `num_averaged` (>= 1):
    1 - decay_n, with decay_n = min(decay, 1 - (1 + n)^-power). Early on the average follows the
    weights closely (decay_1 = 0.37 for power 2/3) and the decay grows towards `decay` (0.9999 is
    reached after 10^6 updates for power 2/3): the warm-up of diffusers' EMAModel and Karras et
    al. 2022, so a short run averages over its own recent weights instead of its initial ones.
    A plain EMA with decay 0.9999 still holds e^-0.42 = 2/3 of the initial weights after 4,200
    steps (the default 10-epoch Fashion-MNIST run)."""
    step_weight = (1.0 + num_averaged.float()).pow(-power)
    return step_weight.clamp(min=1.0 - decay)


def ema_warmup_multi_avg_fn(decay: float, power: float):
    """A multi-tensor `AveragedModel` update (one foreach kernel per device/dtype group) with the
    warm-up above; the weight stays a tensor, so no host-device sync happens per step."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        weight = ema_warmup_weight(num_averaged, decay, power)
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight.to(averaged[0].dtype))
        else:  # integer buffers (e.g. counters) are copied, not averaged
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


class EMA(WeightAveraging):
    """EMA of the weights with a warm-up (see `ema_warmup_weight`), through Lightning's
    weight-averaging hooks: validation uses the averaged weights and checkpoints store them as
    their `state_dict` (the raw weights go to `current_model_state`, restored on resume). The
    average is updated after every optimizer step.

    Outside fitting (test, sampling) a checkpoint's `state_dict` is already the EMA weights;
    Lightning's callback would load the raw weights over them there, so that case is skipped.
    """

    def __init__(self, decay: float = 0.9999, power: float = 2 / 3):
        super().__init__(multi_avg_fn=ema_warmup_multi_avg_fn(decay, power))
        self.decay, self.power = decay, power

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

"""Test-only callbacks, instantiated by Hydra from the command line (`+callbacks.x._target_=`)."""

import os
import signal

import lightning.pytorch as pl
import torch


class SelfSignal(pl.Callback):
    """Deliver a real signal to this process after optimizer step `step` (a preemption)."""

    def __init__(self, step: int, signum: str = "SIGTERM"):
        self.step, self.signum = step, getattr(signal, signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.kill(os.getpid(), self.signum)


class PoisonWeights(pl.Callback):
    """Set one weight to NaN before step `step`, so the next loss is not finite."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")

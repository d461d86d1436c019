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


class PoisonValidation(pl.Callback):
    """From epoch `epoch` on, validate (or, with `test`, test) with one weight tensor filled with
    `value` (nan or inf) and put the training weights back afterwards: the evaluation loss becomes
    non-finite while the training loss stays finite (a model that overflows on held-out data)."""

    def __init__(self, epoch: int, value: float = float("nan"), test: bool = False):
        self.epoch, self.value, self.test, self.kept = epoch, value, test, None

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch >= self.epoch and not trainer.sanity_checking and not self.test:
            self._poison(pl_module)

    def on_test_epoch_start(self, trainer, pl_module):
        if self.test:
            self._poison(pl_module)

    def _poison(self, pl_module):
        weight = next(pl_module.parameters())
        self.kept = weight.detach().clone()
        with torch.no_grad():
            weight.fill_(self.value)

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.kept is not None:
            with torch.no_grad():
                next(pl_module.parameters()).copy_(self.kept)
            self.kept = None

    on_test_epoch_end = on_validation_epoch_end


class Hang(pl.Callback):
    """Sleep `seconds` before the first training batch: a run that stays alive while a test
    starts another one beside it."""

    def __init__(self, seconds: float = 300):
        self.seconds = seconds

    def on_train_start(self, trainer, pl_module):
        import time

        time.sleep(self.seconds)


def wandb_core_children(pid: int) -> list[int]:
    """The wandb-core service processes started by process `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                name, rest = f.read().rsplit(")", 1)
        except OSError:
            continue  # ended meanwhile
        if name.endswith("(wandb-core") and int(rest.split()[1]) == pid:
            found.append(int(entry))
    return found


class SignalWithWandbService(pl.Callback):
    """After optimizer step `step`, SIGTERM this process and its wandb-core service at the same
    moment, as Slurm's scancel does (it signals every process of the job step)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.is_global_zero:
            services = wandb_core_children(os.getpid())
            assert services, "no wandb-core child to signal"
            for pid in [*services, os.getpid()]:
                os.kill(pid, signal.SIGTERM)


class SignalInTest(pl.Callback):
    """Deliver a real SIGTERM to this process at the first test batch (a preemption while the
    run tests its best checkpoint, training done) when $SIGNAL_IN_TEST is set: the same command
    without it is the resume."""

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.is_global_zero and os.environ.get("SIGNAL_IN_TEST"):
            os.kill(os.getpid(), signal.SIGTERM)

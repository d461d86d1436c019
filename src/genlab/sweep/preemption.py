"""Slurm time limits and preemption, for sweeps launched with `hydra/launcher=slurm`.

submitit asks Slurm for its signal (USR2) `signal_delay_s` seconds before a job's time limit,
and at preemption when the cluster sets `PreemptParameters=send_user_signal`. Its own handler
requeues the job at once, which would lose the work since the last epoch-end checkpoint. Here
the signal only asks Lightning to stop at the next batch boundary, exactly like SIGTERM:
genlab's CheckpointOnInterrupt writes `last.ckpt`, and then submitit's handler is called to
requeue the job (up to `max_num_timeout` times for time limits; preemptions do not count).
The requeued job finds the checkpoint in its folder and resumes from it (genlab.sweep.job).

A plain SIGTERM (preemption with `PreemptMode=REQUEUE`, `scancel`) already writes `last.ckpt`;
Slurm itself requeues a preempted job, which resumes the same way.

Under DDP (one Slurm task per rank, on one node or several) the ranks decide together: the
signal reaches each task on its own, at its own moment (or only the tasks of one node), and a
rank that stopped alone would leave the others waiting for it in their next all-reduce. After
every training batch the ranks all-reduce "did any of us get the signal?"; when one did, every
rank stops after that batch, all write the checkpoint together (a collective), and rank 0, whom
submitit lets requeue the job, requeues it also when the signal reached only other ranks.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, open_dict

log = logging.getLogger("genlab")


class _State:
    signum: int | None = None  # the signal received, until handed over to submitit
    submitit_handler: Any = None


STATE = _State()


def under_submitit_slurm() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def install(cfg: DictConfig) -> None:
    """Fill this job's `callbacks.slurm_preemption` (null in conf/callbacks/default.yaml) with
    the stop-on-USR2 callback when it runs under submitit/Slurm."""
    if not under_submitit_slurm() or threading.current_thread() is not threading.main_thread():
        return
    # open_dict only for a config whose callbacks were removed on the command line
    # (`~callbacks`, `~callbacks.slurm_preemption`): a requeued job must still checkpoint first.
    with open_dict(cfg):
        if cfg.get("callbacks") is None:
            cfg.callbacks = {}
        cfg.callbacks.slurm_preemption = {"_target_": f"{__name__}.StopOnRequeueSignal"}


class StopOnRequeueSignal(pl.Callback):
    """While fitting, submitit's requeue signal means: checkpoint at the next batch boundary."""

    def __init__(self) -> None:
        self._previous = None
        self._signum: int | None = None
        self._received = False  # by this process; the ranks decide together (module doc)

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        from submitit.core.job_environment import JobEnvironment

        self._signum = JobEnvironment._usr_sig()
        self._previous = signal.getsignal(self._signum)
        STATE.submitit_handler = self._previous

        def handler(signum, frame):
            self._received = True
            log.warning(
                "Slurm signal %s: stopping after this batch, writing a checkpoint, then "
                "requeueing this job (rank %d).",
                signal.Signals(signum).name,
                trainer.global_rank,
            )

        signal.signal(self._signum, handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._signum is None:
            return
        # Every rank runs this after every batch (a single process reduces nothing).
        if not trainer.strategy.reduce_boolean_decision(self._received, all=False):
            return
        if not self._received:
            name = signal.Signals(self._signum).name
            log.warning("Slurm signal %s reached another rank: stopping after this batch.", name)
        STATE.signum = self._signum
        # Lightning's loops poll this flag at the end of the batch (as for SIGTERM).
        trainer._signal_connector.received_sigterm = True

    def _restore(self) -> None:
        if self._signum is not None and self._previous is not None:
            signal.signal(self._signum, self._previous)
            self._previous = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()


def hand_over() -> None:
    """After genlab wrote its checkpoint: let submitit requeue the job (it exits the process)."""
    if STATE.signum is None:
        return
    signum, STATE.signum = STATE.signum, None
    if callable(STATE.submitit_handler):
        STATE.submitit_handler(signum, None)

"""Progress of long evaluation stages as plain INFO lines on the "genlab" logger.

Lightning's progress bar rewrites one terminal line with carriage returns: nothing of it reaches
Hydra's train.log, and with `trainer.enable_progress_bar=false` (or under Slurm, in a log file)
a test stage of minutes (IWAE NLL over 10,000 images, a DDPM's bound and samples for the FID)
shows no sign of life. Here a stage logs a line when it starts, one now and then while it runs,
and one when it ends:

    testing: 20 batches
    test: 12/20 batches (60%), 41 s elapsed, ~27 s left
    test: 20/20 batches (100%) in 68 s

A progress line comes when both EVERY_FRACTION of the work and EVERY_S seconds have passed
since the previous line (whichever comes later): a long stage logs about ten lines, a short one
only its first and last. Only global rank 0 logs.

`EvaluationProgress` (a Lightning callback, always on in genlab.train) does it for the test
stage, and for validation when a validation pass runs longer than EVERY_S; `report` does it for
loops outside Lightning's, e.g. generating the images of the sample-quality metrics.
"""

from __future__ import annotations

import logging
import math
import time

import lightning.pytorch as pl

log = logging.getLogger("genlab")

EVERY_FRACTION = 0.1  # at most a line per 10% of the work ...
EVERY_S = 30.0  # ... and per 30 seconds


def duration(seconds: float) -> str:
    """'0.4 s', '41 s', '2 min 05 s', '1 h 02 min'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """One pass over `total` units of work. `update(done)` costs an integer compare until the
    next line is due by count; only then is the clock read."""

    def __init__(
        self,
        stage: str,
        total: int,
        unit: str = "",
        every_fraction: float | None = None,
        every_s: float | None = None,
    ):
        self.stage, self.total = stage, int(total)
        self.unit = f" {unit}" if unit else ""
        fraction = EVERY_FRACTION if every_fraction is None else every_fraction
        self.every_s = EVERY_S if every_s is None else every_s
        self.step = max(1, math.ceil(self.total * fraction))
        self.started = time.monotonic()
        self.last_line = self.started
        self.next_done = self.step
        self.done = 0
        self.lines = 0  # progress lines logged so far

    def start_line(self, title: str | None = None) -> None:
        log.info("%s: %d%s", title or self.stage, self.total, self.unit)

    def update(self, done: int) -> None:
        self.done = done
        if done >= self.next_done and done < self.total:
            now = time.monotonic()
            if now - self.last_line >= self.every_s:
                self._line(done, now)
            self.next_done = done + self.step  # by count; the clock is read again only then

    def _line(self, done: int, now: float) -> None:
        elapsed = now - self.started
        left = elapsed / done * (self.total - done)
        log.info(
            "%s: %d/%d%s (%d%%), %s elapsed, ~%s left",
            self.stage,
            done,
            self.total,
            self.unit,
            100 * done // self.total,
            duration(elapsed),
            duration(left),
        )
        self.last_line = now
        self.lines += 1

    def end_line(self) -> None:
        log.info(
            "%s: %d/%d%s (100%%) in %s",
            self.stage,
            self.done,
            self.total,
            self.unit,
            duration(time.monotonic() - self.started),
        )


def _global_rank() -> int:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    # Set by Lightning's strategies at setup (and from RANK / SLURM_PROCID before that).
    return int(getattr(rank_zero_only, "rank", 0) or 0)


_PASSES: dict[str, Progress] = {}


def report(stage: str, done: int, total: int, *, unit: str = "") -> None:
    """Progress of a loop outside Lightning's: call it with done=0 before the loop and with the
    running count after each piece of work, e.g. `report("sampling", start + count, n,
    unit="images")`. Logs "<stage>: <total> <unit>" at the start of a pass, throttled progress
    lines as `EvaluationProgress` does, and "<stage>: <total>/<total> <unit> (100%) in <time>"
    when done reaches total. Passes are kept apart by `stage`; a call with a smaller `done` or
    another `total` than the previous one for that stage starts a new pass. Only global rank 0
    logs; other ranks return at once."""
    if total <= 0:
        return
    current = _PASSES.get(stage)
    if current is None or done < current.done or total != current.total:
        if _global_rank() != 0:
            return
        current = _PASSES[stage] = Progress(stage, total, unit)
        current.start_line()
    current.update(done)
    if done >= total:
        current.end_line()
        del _PASSES[stage]


class EvaluationProgress(pl.Callback):
    """Log lines for the test stage (start, throttled progress, end) and for validation passes
    that run longer than `every_s` (progress and end lines only, so short per-epoch validation
    adds nothing to the log). Costs an integer compare per batch."""

    def __init__(self, every_fraction: float | None = None, every_s: float | None = None):
        self.every_fraction, self.every_s = every_fraction, every_s
        self._pass: Progress | None = None
        self._always = False  # start and end lines even when no progress line came

    def _begin(self, trainer, stage: str, batches, always: bool) -> None:
        self._pass, self._always = None, always
        total = sum(b for b in batches if math.isfinite(b)) if batches else 0
        if trainer.is_global_zero and total > 0:
            self._pass = Progress(stage, int(total), "batches", self.every_fraction, self.every_s)
            if always:
                self._pass.start_line("testing" if stage == "test" else stage)

    def _end(self) -> None:
        if self._pass is not None and (self._always or self._pass.lines):
            self._pass.end_line()
        self._pass = None

    def _batch_end(self) -> None:
        current = self._pass
        if current is not None:
            current.update(current.done + 1)
            # At the last batch, not at epoch end: other callbacks' epoch-end work (the
            # sample-quality metrics) comes after it and reports its own lines.
            if current.done >= current.total:
                self._end()

    # -- test: always reported -----------------------------------------------------------------
    def on_test_start(self, trainer, pl_module) -> None:
        self._begin(trainer, "test", trainer.num_test_batches, always=True)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end()

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end()  # a loader that ran out before its announced length

    # -- validation: only when it is slow ------------------------------------------------------
    def on_validation_start(self, trainer, pl_module) -> None:
        self._pass = None
        if not trainer.sanity_checking:
            self._begin(trainer, "validation", trainer.num_val_batches, always=False)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        self._batch_end()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._end()


class _NoVersionNumber:
    """Lightning's progress bar shows `v_num`, the first logger's version (CSV's 0, printed as
    `v_num: 0.000` by the rich bar): a folder counter, not a number of the run. Left out."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class RichBar(_NoVersionNumber, pl.callbacks.RichProgressBar):
    pass


class TQDMBar(_NoVersionNumber, pl.callbacks.TQDMProgressBar):
    pass


def progress_bars(configured: dict, enabled: bool) -> list:
    """The progress bar Lightning would pick (rich's when rich is installed), without `v_num`;
    none when the bar is off or `callbacks` configures one."""
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    if not enabled or any(
        "ProgressBar" in str((s or {}).get("_target_")) for s in configured.values()
    ):
        return []
    return [RichBar() if _RICH_AVAILABLE else TQDMBar()]

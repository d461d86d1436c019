"""What a run prints: each Lightning line once and without its advertisements, and the warnings
no genlab user can act on silenced by their exact text (train and evaluate= call both)."""

from __future__ import annotations

import logging


class _NoLightningTips(logging.Filter):
    """Drops Lightning's advertisements ("💡 Tip: ... litlogger / litmodels"), printed at every
    Trainer start with no setting to turn them off, and its note that it loads the training data
    early to count the steps (`trainer.estimated_stepping_batches`, read by DDPM's warm-up
    check; genlab's data is in memory, nothing waits); its other INFO lines pass."""

    dropped = ("💡 Tip:", "Loading `train_dataloader` to estimate number of stepping batches")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.dropped)


_NO_TIPS = _NoLightningTips()


def tidy_lightning_logging() -> None:
    """Each Lightning line once on the console (and once in Hydra's train.log), no tips.

    The `lightning` package gives its logger a console handler of its own at import, whatever
    is configured, and its records also propagate to the root logger: where the root has
    handlers (Hydra's console + train.log, pytest), every Lightning INFO line was printed twice.
    There the root's handlers alone print them; without any, Lightning's stay."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_module

    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lightning_log = logging.getLogger(name)
            for handler in list(lightning_log.handlers):
                lightning_log.removeHandler(handler)
            lightning_log.propagate = True
    # The logger rank_zero_info writes through (a filter on a logger sees only its own records).
    if _NO_TIPS not in rank_zero_module.log.filters:
        rank_zero_module.log.addFilter(_NO_TIPS)


def quiet_known_warnings() -> None:
    """Ignore the warnings no genlab user can act on, each matched by its exact text, category and
    the module that issues it: the same text from anywhere else, and every other warning, still
    shows. Idempotent (a filter added again replaces itself)."""
    import warnings

    from lightning.fabric.utilities.warnings import PossibleUserWarning

    # Lightning 2.6's pytree helper uses an isinstance check that torch 2.14 deprecates: a note
    # for Lightning's developers, printed once per run whatever the config.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # Printed by every run on a machine with Slurm's tools (a login node, CI) that is not itself
    # a Slurm job. genlab's Slurm runs are hydra/launcher=slurm jobs, started with srun, where it
    # never shows; nor does it in an allocation of several tasks (SLURM_NTASKS set), the
    # DDP-without-srun hang it is meant for. And its advice, to prepend `srun`, is not genlab's
    # way onto a cluster (hydra/launcher=slurm, README "Sweeps and clusters").
    warnings.filterwarnings(
        "ignore",
        message=r"The `srun` command is available on your system but is not used",
        category=PossibleUserWarning,
        module=r"lightning\.fabric\.plugins\.environments\.slurm",
    )
    # evaluate= and a resume into a new dir load a checkpoint of another dir (its best-k record
    # stays there); a resume in place writes among its checkpoints: both as genlab intends.
    for text in ("The dirpath has changed", "Checkpoint directory .* exists and is not empty"):
        warnings.filterwarnings(
            "ignore", text, UserWarning, r"lightning\.pytorch\.callbacks\.model_checkpoint"
        )
    # torchmetrics' KID and IS keep their features in memory by design; genlab's sample counts
    # (eval.num_samples) are what bounds that memory, and the user already chose them.
    warnings.filterwarnings(
        "ignore",
        message=r"Metric `(Kernel Inception Distance|InceptionScore)` will save all extracted "
        r"features in buffer",
        category=UserWarning,
        module=r"torchmetrics\.utilities\.prints",
    )

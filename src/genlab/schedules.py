"""Learning-rate schedules of the `scheduler=` config group (conf/scheduler/), as factories of
torch.optim.lr_scheduler objects.

Each conf/scheduler/ file names a factory here (or a torch class, OneCycleLR) with Hydra's
`_partial_: true`; the model calls the partial with its optimizer and, where the factory takes
it, `total_steps` (the run's optimizer steps, Lightning's estimated_stepping_batches), and steps
it after every optimizer step. The warm-up schedules are LambdaLR with a closed-form factor of
the step number: the rate of step s is optimizer.lr * factor(s), so a resumed run, which restores
LambdaLR's step count, continues exactly where it stopped, and `factor` is what tests check
the logged rates against. The factors are plain functions (not stored in checkpoints, rebuilt
from the config), so a checkpoint holds tensors and plain data only.
"""

from __future__ import annotations

import math

import torch


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: (s + 1) / W for the first W steps, then 1 (W <= 1: 1 from the start).
    The same expression as genlab's DDPM warm-up always had, so its rates are bit for bit the
    ones of earlier runs."""
    return min(1.0, (step + 1) / max(1, int(warmup_steps)))


def cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up over W steps, then a half cosine from 1 down to `min_lr_ratio`, reached
    after the run's last step (step `total_steps`)."""
    warmup = max(0, int(warmup_steps))
    if step < warmup:
        return warmup_factor(step, warmup)
    progress = min(1.0, (step - warmup) / max(1, int(total_steps) - warmup))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_constant(optimizer: torch.optim.Optimizer, warmup_steps: int = 500):
    """optimizer.lr * warmup_factor(step): linear warm-up, then constant (the DDPM's)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_factor(s, warmup_steps))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
):
    """optimizer.lr * cosine_factor(step): linear warm-up, then cosine decay to the end."""
    if not 0 <= int(warmup_steps) < int(total_steps):
        raise ValueError(
            f"scheduler.warmup_steps={warmup_steps} must be in [0, {total_steps}), the run's "
            "optimizer steps: lower it, or train longer."
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_factor(s, warmup_steps, total_steps, min_lr_ratio)
    )

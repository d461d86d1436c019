"""The benchmark harness: how a run is timed and compared, and where results go.

Every case runs its loops in one process, alternating (a, b, c, a, b, c, ...), each run after
WARMUP untimed steps; a ratio is the median over repeats of the ratio of two runs made back to
back (`paired_ratio`). Shared machines swing by 2x within minutes, so only ratios measured in
the same run mean anything. Imports nothing from the other benchmark modules.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WARMUP = 5  # untimed steps before every timed run


@dataclass(frozen=True)
class Plan:
    """The settings every case reads: where it runs, how long, how often."""

    device: str
    steps: int
    repeats: int
    quick: bool

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"


def timed_fit(
    model, device, steps, precision="32-true", gradient_clip_val=None, **fit_kwargs
) -> float:
    """Seconds of `steps` Lightning training steps after WARMUP untimed ones, with a Trainer
    that does nothing else (no logging, checkpoints, validation or progress bar)."""
    import lightning.pytorch as pl

    timer = {}

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == WARMUP:
                if device == "cuda":
                    torch.cuda.synchronize()
                timer["start"] = time.perf_counter()

        def on_train_end(self, trainer, *args):
            if device == "cuda":
                torch.cuda.synchronize()
            timer["end"] = time.perf_counter()

    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        gradient_clip_val=gradient_clip_val,
        max_steps=WARMUP + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[Timer()],
    )
    trainer.fit(model, **fit_kwargs)
    return timer["end"] - timer["start"]


def alternate(runners: dict, repeats: int) -> dict[str, list[float]]:
    results = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            results[name].append(fn())
    return results


def medians(runs: dict) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in runs.items()}


def paired_ratio(runs: dict, a: str, b: str) -> float:
    """Median over repeats of a/b, each from runs made back to back: on machines whose speed
    drifts by 2x within minutes this is far steadier than a ratio of medians."""
    return statistics.median(x / y for x, y in zip(runs[a], runs[b], strict=True))


def versions(device):
    import lightning

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_results(results: dict, out: Path, doc: Path, report: str) -> None:
    """The JSON results file and the Markdown report (its folder made if missing)."""
    out.write_text(json.dumps(results, indent=2))
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(report)

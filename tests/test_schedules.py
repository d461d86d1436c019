"""Learning-rate schedules (`scheduler=`, conf/scheduler/): each follows its formula step by step
(computed here independently of genlab.schedules and torch), is logged as train/lr, and a run
interrupted mid-epoch and resumed uses the same rates as one that was never interrupted."""

import csv
import math

import lightning.pytorch as pl
import pytest
import torch
from fixtures import TINY_DDPM

from genlab import GenlabError
from genlab.callbacks import TrainingInterrupted
from genlab.models.base import build_scheduler
from genlab.training import run

LR = 1e-3
STEPS = 18  # 2 epochs of 9 batches: 288 training images (N_TRAIN minus validation) / 32
SMALL = [
    "model.mlp.hidden=[32]",
    "model.latent_dim=2",
    "model.iwae_k_val=0",
    "trainer.max_epochs=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "test=false",
    "save_images=false",
    "+callbacks.rates._target_=test_schedules.RateRecorder",
]


class RateRecorder(pl.Callback):
    """The learning rate each optimizer step uses, by step (class-level: survives a resume)."""

    rates: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        RateRecorder.rates[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


class StopAt(pl.Callback):
    """Ask the run to stop after optimizer step `step`, as SIGTERM does (a checkpoint is written
    at that step, genlab.callbacks.CheckpointOnInterrupt); no signal, so pytest is untouched."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True


def expected_rate(schedule: str, s: int, total: int = STEPS, lr: float = LR) -> float:
    """The rate of step s (from 0) as each conf/scheduler/ file's comment writes it."""
    if schedule == "constant":
        return lr
    if schedule == "warmup_constant":  # W = 5
        return lr * min(1.0, (s + 1) / 5)
    if schedule == "warmup_cosine":  # W = 4, m = 0.1
        if s < 4:
            return lr * (s + 1) / 4
        return lr * (0.1 + 0.9 * (1 + math.cos(math.pi * (s - 4) / (total - 4))) / 2)
    assert schedule == "onecycle"  # pct_start 0.3, cos, div 25, final_div 1e4 (torch's phases)
    start, peak = lr / 25, lr
    end, turn = start / 1e4, 0.3 * total - 1

    def cos(a, b, pct):
        return b + (a - b) / 2 * (1 + math.cos(math.pi * pct))

    return (
        cos(start, peak, s / turn) if s <= turn else cos(peak, end, (s - turn) / (total - 1 - turn))
    )


OPTIONS = {
    "constant": [],
    "warmup_constant": ["scheduler.warmup_steps=5"],
    "warmup_cosine": ["scheduler.warmup_steps=4", "scheduler.min_lr_ratio=0.1"],
    "onecycle": [],
}


@pytest.mark.parametrize("schedule", sorted(OPTIONS))
def test_schedule_follows_its_formula_and_resumes_exactly(compose, tmp_path, schedule):
    overrides = [*SMALL, f"scheduler={schedule}", *OPTIONS[schedule]]
    RateRecorder.rates = {}
    run(
        compose(
            *overrides, "+callbacks.stop._target_=test_schedules.StopAt", "+callbacks.stop.step=-1"
        )
    )
    uninterrupted = dict(RateRecorder.rates)
    assert sorted(uninterrupted) == list(range(STEPS))
    for s, rate in uninterrupted.items():
        assert rate == pytest.approx(expected_rate(schedule, s), rel=1e-9, abs=0), s

    # train/lr in the CSV: the rate of every step, only for a real schedule.
    with open(tmp_path / "run" / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {int(r["step"]): float(r["train/lr"]) for r in rows if r.get("train/lr")}
    if schedule == "constant":
        assert not [k for k in rows[0] if "lr" in k.split("/")[-1]]
    else:
        assert logged == pytest.approx(uninterrupted, rel=1e-6)

    # Stopped mid-epoch after step 6, then resumed from its last.ckpt: the same rates.
    RateRecorder.rates = {}
    stopped = [
        *overrides,
        "+callbacks.stop._target_=test_schedules.StopAt",
        "+callbacks.stop.step=7",
    ]
    other = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted):
        run(compose(*stopped, run_dir=other))
    assert sorted(RateRecorder.rates) == list(range(7))
    run(compose(*stopped, "ckpt_path=last", run_dir=other))
    assert RateRecorder.rates == uninterrupted  # exactly: the same floats


def test_the_ddpm_composes_its_warmup_and_the_latent_models_no_schedule(compose):
    ddpm = compose(*TINY_DDPM, "model.warmup_steps=7")
    assert ddpm.scheduler._target_ == "genlab.schedules.warmup_constant"
    assert ddpm.scheduler.warmup_steps == 7  # the DDPM's own key drives it
    assert compose().scheduler._target_ is None
    assert compose("scheduler=onecycle", "model.optimizer.lr=0.01").scheduler.max_lr == 0.01


@pytest.mark.parametrize("schedule", ["warmup_cosine", "onecycle"])
def test_a_schedule_over_the_run_needs_a_run_length(compose, schedule):
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(compose(f"scheduler={schedule}").scheduler, resolve=True)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)

    class Endless:
        estimated_stepping_batches = float("inf")

    with pytest.raises(GenlabError, match="trainer.max_epochs or trainer.max_steps"):
        build_scheduler(spec, optimizer, Endless())


def test_the_retired_lr_schedule_key_names_the_scheduler_group(compose):
    from genlab.composition import friendly_message
    from genlab.run_rules import validate_run_config

    with pytest.raises(Exception) as err:
        compose("model.lr_schedule=cosine")
    message = friendly_message(err.value, ["model.lr_schedule=cosine"], "train")
    assert "scheduler=warmup_cosine" in message and "model.lr_schedule" in message
    with pytest.raises(GenlabError, match="scheduler=warmup_cosine"):
        validate_run_config(compose("+model.lr_schedule=cosine"))

"""The EMA of the weights has a warm-up: a short run averages its own recent weights, not its
initial ones. Checked against an EMA computed by hand from the raw weights of a real run."""

import math

import lightning.pytorch as pl
import pytest
import torch
from fixtures import TINY_DDPM

from genlab.callbacks import EMA, ema_warmup_weight
from genlab.training import run

TINY_DDPM_RUN = [
    *TINY_DDPM,
    "data=mnist",
    "model.warmup_steps=1",
    "test=false",
    "save_images=false",
]


def test_warmup_weight_follows_its_formula_and_reaches_the_decay():
    n = torch.tensor([1.0, 10.0, 1e3, 1e6, 1e8])
    weight = ema_warmup_weight(n, decay=0.9999, power=2 / 3)
    expected = [max(1 - 0.9999, (1 + v) ** (-2 / 3)) for v in n.tolist()]
    assert weight.tolist() == pytest.approx(expected, rel=1e-5)
    assert weight[-1] == pytest.approx(1e-4, rel=1e-4)  # long runs: the paper's 0.9999


def test_short_run_forgets_the_initial_weights():
    # Share of the initial weights left in the average after the default 10-epoch Fashion-MNIST
    # run (~4,200 steps): the product of the (1 - w_n). A plain 0.9999 EMA keeps ~2/3 of them.
    steps = torch.arange(1, 4201, dtype=torch.float64)
    kept_warmup = torch.prod(1 - ema_warmup_weight(steps, 0.9999, 2 / 3)).item()
    kept_plain = 0.9999**4200
    assert kept_plain == pytest.approx(math.exp(-0.42), rel=0.01)
    assert kept_warmup < 1e-6


class RecordRawWeights(pl.Callback):
    """The raw (trained) weights after every optimizer step."""

    def __init__(self):
        self.history: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.history.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_ema_of_a_real_run_equals_the_hand_computed_average(compose, monkeypatch):
    recorder = RecordRawWeights()
    import genlab.training as train_module

    original = train_module.build_callbacks
    # The recorder runs after genlab's EMA update in the same hook order, so each recorded
    # state is the raw weights that update saw (record before EMA would see the same values:
    # the EMA callback does not change the raw weights during training).
    monkeypatch.setattr(train_module, "build_callbacks", lambda cfg: [recorder, *original(cfg)])
    cfg = compose(*TINY_DDPM_RUN, "model.ema_decay=0.999", "model.ema_power=0.5")
    run(cfg)
    ckpt = torch.load(cfg.paths.output_dir + "/checkpoints/last.ckpt", weights_only=True)
    ema = ckpt["state_dict"]
    assert len(recorder.history) >= 5
    # Update 0 copies the weights; update n >= 1 moves by w_n = max(1 - decay, (1 + n)^-power).
    name = next(k for k in ema if k.endswith("weight") and ema[k].is_floating_point())
    expected = recorder.history[0][name].double()
    for n, state in enumerate(recorder.history[1:], start=1):
        w = max(1 - 0.999, (1 + n) ** -0.5)
        expected = (1 - w) * expected + w * state[name].double()
    assert torch.allclose(ema[name].double(), expected, atol=1e-5)
    assert not torch.allclose(ema[name], recorder.history[-1][name])  # an average, not a copy


def test_callback_keeps_lightning_checkpoint_layout():
    callback = EMA(decay=0.99, power=0.75)
    assert callback.should_update(step_idx=0) and not callback.should_update(epoch_idx=0)

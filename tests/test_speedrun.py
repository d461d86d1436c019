"""The speedrun's levers (issue 29): the min-SNR-gamma loss weight against its formula and in the
DDPM's training loss, and experiment=ddpm_fashion_speedrun composing to what docs/results.md
says it is. Its quick mode runs end to end in tests/test_results.py."""

import pytest
import torch
from fixtures import TINY_DDPM

from genlab.diffusion import DiffusionSchedule
from genlab.run_rules import validate_run_config


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_min_snr_weight_matches_its_formula(schedule):
    table = DiffusionSchedule.from_name(schedule, 1000)
    t = torch.arange(0, 1000, 37)
    alpha_bar = table.alpha_bars[t]  # float64, computed independently of loss_weight's tables
    snr = alpha_bar / (1 - alpha_bar)
    for gamma in (1.0, 5.0):
        clipped = snr.clamp(max=gamma)
        expected = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}
        for prediction, weight in expected.items():
            got = table.loss_weight(t, prediction, gamma).double()
            torch.testing.assert_close(got, weight, rtol=1e-4, atol=1e-7)
    assert torch.equal(table.loss_weight(t, "eps", None), torch.ones(len(t)))
    # eps weights: 1 where SNR < gamma (the noisy half), below 1 where the task is easy.
    weights = table.loss_weight(t, "eps", 5.0)
    assert weights[snr < 5].eq(1).all() and weights[snr > 5].lt(1).all()


def test_training_loss_is_the_min_snr_weighted_mse(compose):
    from genlab.builders import build_model

    cfg = compose(*TINY_DDPM, "data=mnist", "model.min_snr_gamma=2", "model.unet.dropout=0")
    validate_run_config(cfg)
    model = build_model(cfg)
    x0 = torch.rand(32, 1, 28, 28) * 2 - 1
    torch.manual_seed(3)
    loss, _ = model.diffusion_loss(x0, None)
    torch.manual_seed(3)  # the same t and noise, by hand
    t = torch.randint(0, 50, (32,))
    noise = torch.randn(x0.shape)
    alpha_bar = model.schedule.alpha_bars[t].view(-1, 1, 1, 1)
    x_t = (alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise).float()
    per_item = (model.net(x_t, t, None) - noise).pow(2).flatten(1).mean(1)
    snr = (alpha_bar / (1 - alpha_bar)).flatten()
    assert (snr > 2).sum() >= 3  # some drawn steps are weighted down: the check can fail
    expected = (per_item.double() * snr.clamp(max=2) / snr).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-6)
    # Held-out losses (a generator given) stay the plain MSE, comparable with unweighted runs.
    plain = build_model(compose(*TINY_DDPM, "data=mnist", "model.unet.dropout=0"))
    plain.load_state_dict(model.state_dict())
    held = [m.diffusion_loss(x0, None, torch.Generator().manual_seed(1))[0] for m in (model, plain)]
    torch.testing.assert_close(held[0], held[1])


def test_the_preset_is_what_the_results_page_says(compose):
    cfg = compose("experiment=ddpm_fashion_speedrun")
    validate_run_config(cfg)
    model = cfg.model
    assert (model.name, cfg.data.name) == ("ddpm", "fashion_mnist")
    # min-SNR-5 gave no gain under the SDE sampler (docs/experiments.md): the plain loss.
    assert model.min_snr_gamma is None
    assert model.sampler == "dpmpp_2m_sde" and model.sample_steps <= 20  # <= 20 network calls
    assert cfg.scheduler._target_ == "genlab.schedules.warmup_cosine"
    assert cfg.scheduler.min_lr_ratio == 0.0
    assert cfg.trainer.max_steps > 0 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.speed.channels_last is False  # slower than NCHW under bf16 on these cores
    # The same network and batch as experiment=ddpm_fashion_cpu: the gain is the recipe's.
    base = compose("experiment=ddpm_fashion_cpu")
    assert model.unet == base.model.unet and cfg.data.batch_size == base.data.batch_size


@pytest.mark.parametrize(
    ("precision", "avx512_bf16", "amx", "warned"),
    [
        ("bf16-mixed", False, False, True),
        ("bf16-mixed", True, False, False),
        ("bf16-mixed", False, True, False),
        ("32-true", False, False, False),
    ],
)
def test_bf16_on_a_cpu_without_bf16_instructions_is_warned(
    monkeypatch, caplog, precision, avx512_bf16, amx, warned
):
    """The preset's bf16-mixed is emulated (slow) on a CPU without AVX512-BF16 or AMX: the
    trainer genlab builds says so, naming the key and the fix; elsewhere it says nothing."""
    from omegaconf import OmegaConf

    from genlab.builders import build_trainer

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    spec = {
        "_target_": "lightning.pytorch.Trainer",
        "accelerator": "cpu",
        "precision": precision,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    with caplog.at_level("WARNING", logger="genlab"):
        build_trainer(OmegaConf.create(spec), [], [], validates=True)
    said = [r.getMessage() for r in caplog.records if r.name == "genlab"]
    if warned:
        assert len(said) == 1 and "trainer.precision=bf16-mixed" in said[0]
        assert "trainer.precision=32-true" in said[0]
    else:
        assert said == []


def test_the_newest_record_is_the_race_on_the_results_page():
    """docs/speedrun-records.json keeps one row per accepted change; its newest row must be the
    speedrun race docs/results.md shows (the records behind the page, docs/results.json)."""
    import json
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    newest = json.loads((docs / "speedrun-records.json").read_text())["records"][-1]
    page = json.loads((docs / "results.json").read_text())["records"]
    train, final = page["race-speedrun.train"], page["race-speedrun-final.quality"]
    assert newest["training_s"] == train["seconds"]
    assert newest["sampling_s"] == final["metrics"]["sampling_s"]
    assert newest["samples"] == final["metrics"]["num_samples"]
    assert newest["fid_domain"] == round(final["metrics"]["fid_domain"], 1)
    assert newest["date"] == final["finished"][:10]

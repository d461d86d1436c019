"""model=ddpm through the real configs: training lowers the loss, EMA is what is used and saved,
the bound lands in the test metrics, conditioning and guidance work, bad settings fail early."""

import pytest
import torch
from fixtures import TINY_DDPM

from genlab import GenlabError
from genlab.builders import build_datamodule, build_model
from genlab.models import DDPM
from genlab.run_rules import validate_run_config
from genlab.training import run

TINY = [
    *TINY_DDPM,
    "model.warmup_steps=1",
    "model.test_bpd_images=16",
    "model.bpd_t_chunk=25",
    "model.preview_steps=5",
]


@pytest.mark.parametrize("data", ["mnist", "fashion_mnist", "cifar10"])
def test_ddpm_builds_from_data_config(compose, data):
    cfg = compose(*TINY, f"data={data}")
    validate_run_config(cfg)
    model = build_model(cfg)
    c, h, _ = cfg.data.image_shape
    out = model.net(torch.randn(2, c, h, h), torch.tensor([0, 49]))
    assert out.shape == (2, c, h, h)


def test_training_steps_lower_the_loss(compose):
    cfg = compose(*TINY, "data=mnist", "model.optimizer.lr=2e-3", "model.unet.dropout=0")
    torch.manual_seed(0)
    model, dm = build_model(cfg), build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    x = dm.splits["train"][0][:32].float() / 255
    optimizer = model.configure_optimizers()["optimizer"]

    def held_out_loss():
        g = torch.Generator().manual_seed(0)  # same t and noise before and after
        with torch.no_grad():
            return float(model.compute_terms(x, None, generator=g)[0])

    before = held_out_loss()
    for _ in range(150):
        loss, _ = model.compute_terms(x, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert held_out_loss() < 0.5 * before


def test_run_saves_ema_weights_and_reports_bits_per_dim(compose, tmp_path):
    metrics = run(compose(*TINY, "data=mnist", "model.ema_decay=0.9", "trainer.max_epochs=2"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # EMA differs from the raw weights
    assert int(ckpt["averaging_state"]["n_averaged"]) == 2 * 9  # one update per optimizer step
    # Loading for sampling gives the EMA weights.
    model = DDPM.load_from_checkpoint(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    for k, v in model.state_dict().items():
        if k in ema:
            assert torch.equal(v, ema[k]), k
    # The variational bound, in bits/dim, is the sum of its parts.
    parts = metrics["test/bpd_prior"] + metrics["test/bpd_diffusion"] + metrics["test/bpd_decoder"]
    assert metrics["test/bpd"] == pytest.approx(parts, rel=1e-4)
    assert 0 < metrics["test/bpd"] < 20 and metrics["test/bpd_prior"] >= 0
    assert (tmp_path / "run" / "samples.png").is_file()
    assert not (tmp_path / "run" / "reconstructions.png").exists()


def test_resume_restores_ema_state(compose, tmp_path):
    common = [*TINY, "data=mnist", "model.ema_decay=0.9", "test=false", "save_images=false"]
    run(compose(*common, "trainer.max_epochs=2", run_dir=tmp_path / "straight"))
    run(compose(*common, run_dir=tmp_path / "first"))
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run(compose(*common, "trainer.max_epochs=2", f"ckpt_path={first}", run_dir=tmp_path / "res"))
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "res" / "checkpoints" / "last.ckpt", weights_only=True)
    for part in ("state_dict", "current_model_state"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_conditional_sampling_and_guidance(compose):
    cfg = compose(*TINY, "data=mnist", "model.conditional=true")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # residual branches and the output start at zero (Ho et al.)
        for conv in model.net.modules():
            if isinstance(conv, torch.nn.Conv2d) and not conv.weight.any():
                conv.weight.normal_(0, 0.02)
    labels, others = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])
    x_t, t = torch.randn(4, 1, 28, 28), torch.full((4,), 30)
    with torch.no_grad():
        cond = model.denoise_fn(labels)(x_t, t)
        uncond = model.net(x_t, t, None)
        guided = model.denoise_fn(labels, guidance_scale=2.0)(x_t, t)
        assert not torch.allclose(cond, model.denoise_fn(others)(x_t, t))  # labels matter
        # classifier-free guidance: eps_c + w (eps_c - eps_u)
        torch.testing.assert_close(guided, cond + 2.0 * (cond - uncond), rtol=1e-4, atol=1e-5)
    g = lambda: torch.Generator().manual_seed(0)
    plain = model.sample(4, labels, g())
    assert plain.shape == (4, 1, 28, 28) and plain.min() >= 0 and plain.max() <= 1
    torch.testing.assert_close(plain, model.sample(4, labels, g()))  # seeded: repeatable
    unconditional = build_model(compose(*TINY, "data=mnist"))
    with pytest.raises(GenlabError, match="needs a class-conditional DDPM"):
        unconditional.sample(2, guidance_scale=1.0)


def test_samplers_chosen_by_steps(compose):
    model = build_model(compose(*TINY, "data=mnist"))
    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    # DDIM with eta=0 is deterministic given x_T, whatever the generator
    a = model.sample(2, generator=torch.Generator().manual_seed(2), steps=10, x_T=x_T)
    b = model.sample(2, generator=torch.Generator().manual_seed(3), steps=10, x_T=x_T)
    torch.testing.assert_close(a, b)
    # ancestral sampling (steps = T) adds fresh noise at every step
    c = model.sample(2, generator=torch.Generator().manual_seed(2), steps=50, x_T=x_T)
    d = model.sample(2, generator=torch.Generator().manual_seed(3), steps=50, x_T=x_T)
    assert not torch.allclose(c, d)
    with pytest.raises(GenlabError, match="steps=51.*T=50"):
        model.sample(1, steps=51)


def test_bf16_mixed_precision_training(compose):
    metrics = run(
        compose(
            *TINY, "data=mnist", "trainer.precision=bf16-mixed", "test=false", "save_images=false"
        )
    )
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


BAD = [
    ("model.timesteps=0", r"model\.timesteps=0.*an integer >= 1"),
    ("model.schedule=quadratic", r"model\.schedule='quadratic'.*linear, cosine"),
    ("model.timesteps=20", r"model\.timesteps=20 with model\.schedule=linear.*cosine"),
    ("model.prediction=score", r"model\.prediction='score'.*eps, x0, v"),
    ("model.sample_steps=51", r"model\.sample_steps=51.*between 1 and model\.timesteps=50"),
    ("model.sample_steps=0", r"model\.sample_steps=0.*between 1"),
    ("model.guidance_scale=2", r"guidance_scale=2 needs a class-conditional model"),
    ("model.unet.channel_mults=[1,2,2,2]", r"divisible by 8.*28x28"),
    ("model.unet.attn_resolutions=[16]", r"attn_resolutions.*\[28, 14\]"),
]


@pytest.mark.parametrize(("override", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_ddpm_settings_fail_before_work(compose, override, message):
    with pytest.raises(GenlabError, match=message):
        validate_run_config(compose(*TINY, "data=mnist", override))

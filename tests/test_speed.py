"""The speed switches (`speed.compile`, `speed.channels_last`, `model.optimizer.fused`): each keeps
the model's math and its checkpoints, and bad combinations fail before any work."""

import copy

import pytest
import torch

from genlab import GenlabError
from genlab.models import AE, DDPM, VAE
from genlab.models.base import build_optimizer
from genlab.run_rules import validate_run_config
from genlab.training import run

TINY_CONV = ["model.arch=conv", "model.conv.channels=[4,8]", "model.conv.fc_dim=16"]
TINY_DDPM = [
    "model=ddpm",
    "model.timesteps=30",
    "model.sample_steps=5",
    "model.preview_steps=2",
    "model.unet.base_channels=8",
    "model.unet.channel_mults=[1,2]",
    "model.warmup_steps=1",
    "model.ema_decay=null",
    "model.test_bpd_images=2",
]


def _train_steps(model, optimizer, batches):
    for x in batches:
        loss, _ = model.compute_terms(x, torch.zeros(len(x), dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_fused_default_is_the_same_update_as_torchs_default():
    torch.manual_seed(0)
    base = AE(image_shape=[1, 28, 28], latent_dim=4, mlp={"hidden": [32]})
    batches = [torch.rand(16, 1, 28, 28) for _ in range(5)]
    models = {}
    for fused in (None, False):
        model = copy.deepcopy(base)
        spec = {"_target_": "torch.optim.Adam", "lr": 1e-2, "fused": fused}
        optimizer = build_optimizer(spec, model.parameters())
        assert optimizer.param_groups[0]["fused"] is (fused is None)
        torch.manual_seed(1)
        _train_steps(model, optimizer, batches)
        models[fused] = model
    trained = dict(models[False].named_parameters())
    for name, a in models[None].named_parameters():
        if a.requires_grad and a.grad is not None:
            assert not torch.equal(a, base.state_dict()[name]), f"{name} did not train"
        torch.testing.assert_close(a, trained[name], rtol=1e-5, atol=1e-6)


def test_fused_is_left_out_where_it_cannot_work():
    params = [torch.nn.Parameter(torch.zeros(3))]
    rmsprop = build_optimizer({"_target_": "torch.optim.RMSprop", "lr": 0.1}, params)
    assert "fused" not in rmsprop.defaults  # no such kernel: torch's own implementation
    adam = {"_target_": "torch.optim.Adam", "lr": 0.1, "fused": None}
    assert build_optimizer(adam, params, mixed_precision=True).defaults["fused"] is False
    with pytest.raises(GenlabError, match="RMSprop has no fused implementation"):
        build_optimizer({"_target_": "torch.optim.RMSprop", "lr": 0.1, "fused": True}, params)


def test_training_picks_the_fused_kernel_and_mixed_precision_does_not(
    compose, tmp_path, monkeypatch
):
    """bf16-mixed with the DDPM's gradient clipping: Lightning refuses fused optimizers there."""
    captured = {}
    original = DDPM.configure_optimizers

    def spy(self):
        result = original(self)
        captured[str(self.trainer.precision)] = result["optimizer"].defaults["fused"]
        return result

    monkeypatch.setattr(DDPM, "configure_optimizers", spy)
    for precision in ("32-true", "bf16-mixed"):
        run(
            compose(
                *TINY_DDPM,
                "data=mnist",
                f"trainer.precision={precision}",
                "trainer.max_steps=2",
                "test=false",
                "save_images=false",
                run_dir=tmp_path / precision,
            )
        )
    assert captured == {"32-true": True, "bf16-mixed": False}


def test_channels_last_keeps_outputs_and_checkpoint_layout():
    torch.manual_seed(0)
    plain = VAE(
        image_shape=[3, 32, 32],
        latent_dim=4,
        arch="conv",
        conv={"channels": [4, 8], "fc_dim": 16},
        likelihood="gaussian",
    )
    fast = copy.deepcopy(plain)
    fast.apply_speed_switches(channels_last=True)
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert convs and all(
        m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
        for m in convs
    )
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast.encode(x), plain.encode(x), rtol=1e-5, atol=1e-5)
    reloaded = copy.deepcopy(plain)
    reloaded.load_state_dict(fast.state_dict())
    for a, b in zip(reloaded.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


def test_compile_switch_compiles_the_networks_in_place():
    model = DDPM(image_shape=[1, 28, 28], unet={"base_channels": 8, "channel_mults": [1, 2]})
    keys = list(model.state_dict())
    model.apply_speed_switches(compile=True)
    assert model.net._compiled_call_impl is not None
    assert list(model.state_dict()) == keys  # no `_orig_mod.` prefixes: checkpoints still load
    vae = VAE(image_shape=[1, 28, 28], latent_dim=2)
    vae.apply_speed_switches(compile=True)
    assert vae.encoder._compiled_call_impl is not None
    assert vae.decoder._compiled_call_impl is not None


@pytest.mark.slow
def test_compiled_training_matches_eager(compose, tmp_path):
    """A real torch.compile run (minutes of compiling on 2 CPU cores): same weights as eager."""
    from torch._dynamo.utils import counters

    weights, graphs = {}, {}
    for name, compiled in (("eager", "false"), ("compiled", "true")):
        counters.clear()
        run(
            compose(
                "model=ae",
                "model.mlp.hidden=[16]",
                "model.latent_dim=2",
                "trainer.max_steps=3",
                "test=false",
                "save_images=false",
                f"speed.compile={compiled}",
                run_dir=tmp_path / name,
            )
        )
        graphs[name] = counters["stats"]["unique_graphs"]
        ckpt = tmp_path / name / "checkpoints" / "last.ckpt"
        weights[name] = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert graphs["eager"] == 0 and graphs["compiled"] >= 2  # the encoder and the decoder
    assert list(weights["eager"]) == list(weights["compiled"])
    for key, value in weights["eager"].items():
        torch.testing.assert_close(weights["compiled"][key], value, rtol=1e-4, atol=1e-5)


def test_channels_last_run_trains_and_its_checkpoint_loads_plainly(compose, tmp_path, monkeypatch):
    from genlab.models.base import GenerativeModule

    applied, original = [], GenerativeModule.apply_speed_switches

    def record(self, **switches):
        original(self, **switches)
        conv = next(m for m in self.modules() if isinstance(m, torch.nn.Conv2d))
        applied.append((switches, conv.weight.is_contiguous(memory_format=torch.channels_last)))

    monkeypatch.setattr(GenerativeModule, "apply_speed_switches", record)
    run(
        compose(
            *TINY_CONV,
            "data=cifar10",
            "speed.channels_last=true",
            "trainer.max_steps=2",
            "test=false",
            "save_images=false",
            "eval.sample_quality=false",
        )
    )
    assert applied == [({"compile": False, "channels_last": True}, True)]  # train.py applied it
    from genlab.models import MODEL_CLASSES
    from genlab.runs import load_model

    # sample.py builds a model without the switch from the checkpoint and loads its weights
    model, kind = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt", MODEL_CLASSES)
    assert kind == "vae"
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    images = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 3, 32, 32) and torch.isfinite(images).all()


BAD = [
    ("speed.channels_last=true", r"speed\.channels_last=true, but model\.arch=mlp"),
    ("speed.compile=yes", r"speed\.compile='yes' \(str\).*true or false"),
    ("model.optimizer.fused=maybe", r"model\.optimizer\.fused='maybe'.*true, false or null"),
    (
        "model.optimizer._target_=torch.optim.RMSprop model.optimizer.fused=true",
        r"torch\.optim\.RMSprop has no fused implementation",
    ),
    (
        "model=ddpm model.optimizer.fused=true trainer.precision=bf16-mixed",
        r"fused=true with trainer\.precision=bf16-mixed and gradient clipping",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_speed_settings_fail_before_work(compose, overrides, message):
    with pytest.raises(GenlabError, match=message):
        validate_run_config(compose(*overrides.split()))


def test_compile_on_a_cpu_without_a_compiler_says_what_to_install(compose, monkeypatch):
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GenlabError, match=r"needs a C\+\+ compiler.*apt install g\+\+"):
        validate_run_config(compose("speed.compile=true"))

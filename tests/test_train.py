"""End to end through genlab.training.run with the real configs: outputs, metrics, seeds, resume,
loggers and precision."""

import json

import pytest
import torch
from PIL import Image

from genlab.training import run

SMALL = ["model.mlp.hidden=[64]", "model.latent_dim=4"]


def _weights(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_default_run_writes_everything(compose, tmp_path):
    cfg = compose(*SMALL)
    assert cfg.model.name == "vae" and cfg.data.name == "fashion_mnist"  # the documented defaults
    metrics = run(cfg)
    out = tmp_path / "run"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert len(list((out / "checkpoints").glob("epoch=*.ckpt"))) == 1
    saved = (out / "config.yaml").read_text()
    assert "latent_dim: 4" in saved and "_target_: genlab.models.VAE" in saved
    # val and test metrics with stage/name keys, in nats per image
    for key in ("val/loss", "val/recon", "val/kl", "val/elbo", "test/elbo", "test/recon"):
        assert key in metrics
    assert metrics["test/elbo"] == pytest.approx(
        -(metrics["test/recon"] + metrics["test/kl"]), rel=1e-4
    )
    assert json.loads((out / "metrics.json").read_text())["test/elbo"] == pytest.approx(
        metrics["test/elbo"]
    )
    header = (out / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/elbo", "val/kl", "train/loss_epoch", "test/elbo"} <= set(header)
    hparams = (out / "csv" / "version_0" / "hparams.yaml").read_text()
    assert f"beta_norm: {4 / 784}" in hparams
    # 64 samples as an 8x8 grid of 28px images with 2px padding; reconstructions: 8 row pairs
    assert Image.open(out / "samples.png").size == (8 * 30 + 2, 8 * 30 + 2)
    assert Image.open(out / "reconstructions.png").size == (8 * 30 + 2, 16 * 30 + 2)


def test_ae_writes_reconstructions_but_no_samples(compose, tmp_path):
    run(compose("model=ae", "data=mnist", "test=false"))
    assert (tmp_path / "run" / "reconstructions.png").is_file()
    assert not (tmp_path / "run" / "samples.png").exists()


def test_seed_makes_runs_repeat_bit_for_bit(compose, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run(
            compose(
                *SMALL, f"seed={seed}", "test=false", "save_images=false", run_dir=tmp_path / name
            )
        )
        runs[name] = _weights(tmp_path / name / "checkpoints" / "last.ckpt")
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_resume_continues_step_count(compose, tmp_path):
    common = [*SMALL, "test=false", "save_images=false"]
    run(compose(*common, run_dir=tmp_path / "first"))
    first = torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", weights_only=True)
    steps_per_epoch = first["global_step"]
    assert steps_per_epoch == 9  # 288 training images / batch 32
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run(compose(*common, "trainer.max_epochs=2", f"ckpt_path={ckpt}", run_dir=tmp_path / "second"))
    second = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=True)
    assert second["global_step"] == 2 * steps_per_epoch and second["epoch"] == 1
    assert (tmp_path / "first" / "checkpoints" / "last.ckpt").is_file()  # old run untouched


def test_several_loggers_with_wandb_offline(compose, tmp_path, caplog):
    run(compose(*SMALL, "logger=[csv,tensorboard,wandb]", "test=false", "save_images=false"))
    out = tmp_path / "run"
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    offline_runs = list((out / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    assert "no API key found" in caplog.text and "wandb sync" in caplog.text


def test_bf16_mixed_precision_trains_on_cpu(compose):
    metrics = run(
        compose(*SMALL, "trainer.precision=bf16-mixed", "test=false", "save_images=false")
    )
    assert torch.isfinite(torch.tensor(metrics["val/elbo"]))
    assert metrics["val/elbo"] < 0


def test_gradient_clipping_and_accumulation(compose, tmp_path):
    run(
        compose(
            *SMALL,
            "trainer.gradient_clip_val=1.0",
            "trainer.accumulate_grad_batches=3",
            "test=false",
            "save_images=false",
        )
    )
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3  # 9 batches, one optimizer step per 3

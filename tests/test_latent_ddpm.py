"""model=latent_ddpm (issue 16 item 1): a DDPM over the codes of a trained autoencoder run, decoded
through it. A tiny AE run, then a tiny latent DDPM on it through train.py's run: the checkpoint
reloads and samples images; the normalisation is the training split's; the autoencoder is
frozen and outside the optimizer; a moved or changed autoencoder run is one clear error; the loss
is the v-loss on the normalised latents; sample.py draws from it. And a VQ-VAE's code grid."""

import hashlib
import math
import shutil

import numpy as np
import pytest
import torch
from fixtures import compose_run
from PIL import Image

import genlab
from genlab import GenlabError
from genlab.builders import build_datamodule
from genlab.models import MODEL_CLASSES, LatentDDPM
from genlab.models.latent_ddpm.model import AutoencoderUnavailable
from genlab.runs import load_run
from genlab.sample import run as sample
from genlab.training import run

TINY_PRIOR = [
    "model=latent_ddpm",
    "model.timesteps=50",
    "model.sample_steps=10",
    "model.mlp.hidden=[64,64]",
    "model.warmup_steps=1",
    "model.ema_decay=0.9",
    "model.optimizer.lr=2e-3",
    "eval.sample_quality=false",
]


@pytest.fixture(scope="module")
def ae_dir(data_root, tmp_path_factory):
    """Seed 001's MLP autoencoder (k = 9), one epoch on the tiny MNIST."""
    out = tmp_path_factory.mktemp("ae") / "run"
    run(compose_run(data_root, out, "model=ae", "data=mnist", "test=false", "save_images=false"))
    return out


@pytest.fixture(scope="module")
def prior(data_root, ae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "run"
    cfg = compose_run(
        data_root,
        out,
        *TINY_PRIOR,
        "data=mnist",
        f"model.autoencoder={ae_dir}",
        "trainer.max_epochs=2",
    )
    return out, cfg, run(cfg)


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_trained_prior_reloads_and_decodes_samples(prior, ae_dir):
    out, _, metrics = prior
    for key in ("train/loss_epoch", "val/loss", "test/loss"):
        assert math.isfinite(metrics[key]), key
    assert (out / "samples.png").is_file() and not (out / "reconstructions.png").exists()

    loaded = load_run(out, MODEL_CLASSES)
    model = loaded.model
    assert loaded.name == "latent_ddpm" and model.capabilities.generative
    assert model.capabilities.diffusion and not model.capabilities.encoder
    assert model.noise_shape == (9,)  # seed 001's bottleneck
    # The checkpoint records the autoencoder (path + hash) and holds none of its weights.
    ckpt = torch.load(loaded.checkpoint, weights_only=True)
    ae_ckpt = load_run(ae_dir, MODEL_CLASSES).checkpoint
    assert ckpt["hyper_parameters"]["autoencoder"] == str(ae_dir.resolve())
    assert ckpt["hyper_parameters"]["autoencoder_sha256"] == _sha256(ae_ckpt)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} <= {"net", "latent_mean", "latent_std"}

    images = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, 1, 28, 28)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    pipe = genlab.load(out)
    for sampler in ("ddpm", "ddim", "dpmpp_2m"):
        steps = 50 if sampler == "ddpm" else 5
        drawn = pipe.sample(3, seed=1, sampler=sampler, steps=steps)
        assert drawn.shape == (3, 1, 28, 28) and 0 <= drawn.min() <= drawn.max() <= 1
    assert torch.equal(pipe.sample(2, seed=3), pipe.sample(2, seed=3))


def test_scale_is_the_training_split_latents_mean_and_std(prior, ae_dir):
    out, cfg, _ = prior
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    images, _ = datamodule.splits["train"]
    ae = load_run(ae_dir, MODEL_CLASSES).model  # loaded on its own, not the prior's copy
    with torch.no_grad():
        z = ae.encode_mean(images.float() / 255).double()
    model = load_run(out, MODEL_CLASSES).model
    torch.testing.assert_close(model.latent_mean.double(), z.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.latent_std.double(), z.std(0), rtol=1e-5, atol=1e-6)
    assert z.std(0).max() / z.std(0).min() > 1.5  # the scales differ per dimension


def test_autoencoder_is_frozen_and_not_in_the_optimizer(prior, ae_dir):
    import lightning.pytorch as pl

    from genlab.builders import build_model

    _, cfg, _ = prior
    torch.manual_seed(0)
    model = build_model(cfg)
    ae = model.autoencoder
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    on_disk = torch.load(load_run(ae_dir, MODEL_CLASSES).checkpoint, weights_only=True)[
        "state_dict"
    ]
    net_before = {k: v.clone() for k, v in model.net.state_dict().items()}
    datamodule = build_datamodule(cfg)
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)
    assert model.scale_measured
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters()}
    assert not in_optimizer & {id(p) for p in ae.parameters()}
    assert not any(p.requires_grad for p in ae.parameters()) and not ae.training
    for k, v in ae.state_dict().items():  # bit-identical, and the checkpoint's own weights
        assert torch.equal(v, before[k]) and torch.equal(v, on_disk[k]), k
    assert any(not torch.equal(v, net_before[k]) for k, v in model.net.state_dict().items())
    assert not any(k.startswith(("encoder", "decoder", "head")) for k in model.state_dict())


def test_loss_is_the_v_loss_on_the_normalised_latents(prior, ae_dir):
    out, _, _ = prior
    model = load_run(out, MODEL_CLASSES).model
    x = load_run(ae_dir, MODEL_CLASSES).test_split()[0][:16].float() / 255
    loss, _ = model.compute_terms(x, None, generator=torch.Generator().manual_seed(7))
    # Independently: the same draws of t and eps, the forward process and the target by hand:
    # v = sqrt(ab) eps - sqrt(1 - ab) z (Salimans & Ho 2022), the latent DDPM's default.
    assert model.prediction == "v"
    ae = load_run(ae_dir, MODEL_CLASSES).model
    with torch.no_grad():
        z = (ae.encode_mean(x) - model.latent_mean) / model.latent_std
        g = torch.Generator().manual_seed(7)
        t = torch.randint(0, 50, (16,), generator=g)
        eps = torch.randn(z.shape, generator=g)
        alpha_bar = model.schedule.alpha_bars[t].float().unsqueeze(1)
        x_t = alpha_bar.sqrt() * z + (1 - alpha_bar).sqrt() * eps
        v = alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * z
        expected = (model.net(x_t, t) - v).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_moved_or_changed_autoencoder_is_a_clear_error(prior, ae_dir, tmp_path):
    out, _, _ = prior
    moved = tmp_path / "elsewhere"
    shutil.move(ae_dir, moved)
    try:
        with pytest.raises(AutoencoderUnavailable, match="no longer loads.*moved or deleted"):
            load_run(out, MODEL_CLASSES)
        with pytest.raises(GenlabError, match=str(ae_dir.resolve())):
            genlab.load(out)
    finally:
        shutil.move(moved, ae_dir)
    ckpt_path = load_run(ae_dir, MODEL_CLASSES).checkpoint
    original = ckpt_path.read_bytes()
    try:
        state = torch.load(ckpt_path, weights_only=True)
        first = next(iter(state["state_dict"]))
        state["state_dict"][first] = state["state_dict"][first] + 1e-3
        torch.save(state, ckpt_path)
        with pytest.raises(AutoencoderUnavailable, match="has changed since.*sha256"):
            load_run(out, MODEL_CLASSES)
    finally:
        ckpt_path.write_bytes(original)
    assert load_run(out, MODEL_CLASSES).name == "latent_ddpm"  # back in place: loads again


def test_sample_py_draws_decoded_samples(prior, tmp_path):
    out, _, _ = prior
    (path,) = sample({"run": str(out), "task": "samples", "n": 3, "out_dir": str(tmp_path)})
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    tiles = [
        pixels[2 + r * 30 : r * 30 + 30, 2 + c * 30 : c * 30 + 30]
        for r in range(3)
        for c in range(3)
    ]
    assert all(tile.std() > 0 for tile in tiles)  # every sample has structure, none is flat
    assert np.std([tile.mean() for tile in tiles]) > 0  # and they are not all the same


def test_a_vqvae_code_grid_gets_a_unet_prior_decoded_through_nearest_codes(
    data_root, tmp_path_factory
):
    out = tmp_path_factory.mktemp("vq") / "run"
    vq = [
        "model=vqvae",
        "model.channels=[8,8]",
        "model.code_dim=4",
        "model.num_codes=16",
        "test=false",
        "save_images=false",
    ]
    run(compose_run(data_root, out, *vq, "data=mnist"))
    torch.manual_seed(0)
    model = LatentDDPM(
        image_shape=[1, 28, 28],
        autoencoder=str(out),
        timesteps=50,
        sample_steps=10,
        unet={"base_channels": 8, "channel_mults": [1], "num_res_blocks": 1},
    )
    assert model.noise_shape == (4, 7, 7) and type(model.net).__name__ == "UNet"
    ae = model.autoencoder
    images = load_run(out, MODEL_CLASSES).test_split()[0][:32]
    model.measure_scale(images, batch_size=10)
    with torch.no_grad():
        grid = ae.quantizer.lookup(ae.encode(images.float() / 255)).double()
    torch.testing.assert_close(
        model.latent_std.double().flatten(),
        grid.transpose(0, 1).flatten(1).std(1),
        rtol=1e-5,
        atol=1e-6,
    )
    loss, _ = model.compute_terms(images.float() / 255, None)
    assert torch.isfinite(loss)
    samples = model.sample(3, generator=torch.Generator().manual_seed(0), steps=5)
    assert samples.shape == (3, 1, 28, 28) and 0 <= samples.min() <= samples.max() <= 1
    # Decoded from the nearest codes: every sample is the decoding of some index grid.
    x = torch.randn(2, 4, 7, 7)
    z = model.denormalise(x)
    codes = ae.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, 4)).view(2, 7, 7)
    torch.testing.assert_close(model.to_images(x), ae.decode_images(codes))


def test_conditional_prior_samples_a_chosen_class_with_guidance(ae_dir):
    model = LatentDDPM(
        image_shape=[1, 28, 28],
        autoencoder=str(ae_dir),
        timesteps=50,
        sample_steps=10,
        conditional=True,
        guidance_scale=1.5,
        mlp={"hidden": [32]},
    )
    assert model.capabilities.conditional
    x, y = load_run(ae_dir, MODEL_CLASSES).test_split()
    model.measure_scale(x[:64])
    loss, _ = model.compute_terms(x[:8].float() / 255, y[:8])
    assert torch.isfinite(loss)
    labels = torch.tensor([0, 3])
    assert model.sample(2, labels, generator=torch.Generator().manual_seed(0), steps=4).shape == (
        2,
        1,
        28,
        28,
    )


def test_a_missing_or_wrong_autoencoder_is_refused_when_built(ae_dir, tmp_path):
    with pytest.raises(GenlabError, match="model.autoencoder=.*does not exist"):
        LatentDDPM(image_shape=[1, 28, 28], autoencoder=str(tmp_path / "nothing"))
    with pytest.raises(GenlabError, match="takes images of shape"):
        LatentDDPM(image_shape=[3, 32, 32], autoencoder=str(ae_dir))

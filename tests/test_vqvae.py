"""model=vqvae (issue 16 item 2): nearest-code quantisation with the straight-through gradient,
the EMA codebook against a hand-computed update, dead-code restarts, perplexity, and a tiny run
whose checkpoint reconstructs through sample.py's loader."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from genlab import GenlabError
from genlab.models import MODEL_CLASSES, VQVAE
from genlab.models.vqvae.model import VectorQuantizer
from genlab.runs import load_run
from genlab.sample import run as sample
from genlab.training import run

SIDE, PAD = 28, 2


def test_nearest_code_and_straight_through_gradient():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 3, dead_code_steps=0)
    with torch.no_grad():
        quantizer.codebook.normal_()
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    z_st, indices, _, counts = quantizer(z_e)
    # Nearest codes by brute force over every (cell, code) pair.
    flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    expected = torch.cdist(flat, quantizer.codebook).argmin(1)
    assert torch.equal(indices.flatten(), expected)
    assert counts.sum() == 32
    torch.testing.assert_close(z_st.detach(), quantizer.codebook[indices].permute(0, 3, 1, 2))

    weights = torch.randn(2, 3, 4, 4)

    def downstream(z):  # any nonlinear function of the quantised grid (the decoder's loss)
        return (weights * z).sum() + z.pow(3).sum()

    (grad_e,) = torch.autograd.grad(downstream(z_st), z_e)
    # Independently: the gradient of the same function at the quantised values, as a leaf.
    z_q = quantizer.codebook[indices].permute(0, 3, 1, 2).detach().requires_grad_()
    (grad_q,) = torch.autograd.grad(downstream(z_q), z_q)
    torch.testing.assert_close(grad_e, grad_q)


def _grid(vectors):
    """A [1, D, 2, 2] encoder grid whose cells, in row-major order, are `vectors` [4, D]."""
    return torch.tensor(vectors).T.reshape(1, len(vectors[0]), 2, 2)


def test_ema_update_matches_a_hand_computed_update():
    decay, eps = 0.5, 0.1
    quantizer = VectorQuantizer(3, 2, "ema", decay=decay, eps=eps, dead_code_steps=0)
    codes = [[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor(codes))
        quantizer.ema_sum.copy_(torch.tensor(codes))
    cells = [[0.1, 0.0], [0.9, 1.2], [1.1, 0.8], [-0.1, 0.2]]
    z_e = _grid(cells)
    _, indices, _, _ = quantizer(z_e)
    assert indices.flatten().tolist() == [0, 1, 1, 0]
    quantizer.update(z_e, indices)
    # By hand: N = decay N + (1 - decay) n, m = decay m + (1 - decay) sum of the cells,
    # e = m / ((N + eps) / (sum N + K eps) * sum N).
    n_new = [decay * 1 + (1 - decay) * c for c in (2, 2, 0)]
    sums = [[0.0, 0.2], [2.0, 2.0], [0.0, 0.0]]
    m_new = [[decay * codes[k][d] + (1 - decay) * sums[k][d] for d in range(2)] for k in range(3)]
    total = sum(n_new)
    smoothed = [(n + eps) / (total + 3 * eps) * total for n in n_new]
    expected = [[m_new[k][d] / smoothed[k] for d in range(2)] for k in range(3)]
    torch.testing.assert_close(quantizer.ema_count, torch.tensor(n_new))
    torch.testing.assert_close(quantizer.codebook, torch.tensor(expected))
    assert expected[2][0] == pytest.approx(4.5238, abs=1e-4)  # the unused code moved too


def test_codes_unused_for_n_steps_are_restarted_from_encoder_outputs():
    quantizer = VectorQuantizer(4, 2, "ema", dead_code_steps=3)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [50.0, 50], [-50.0, 9]]))
        quantizer.ema_sum.copy_(quantizer.codebook)
    z_e = _grid([[0.1, 0.0], [0.9, 1.2], [1.1, 0.8], [-0.1, 0.2]])
    restarted = []
    for _ in range(3):
        _, indices, _, _ = quantizer(z_e)
        restarted.append(quantizer.update(z_e, indices))
    assert restarted == [0, 0, 2]  # codes 2 and 3, idle for 3 steps
    cells = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    for code in quantizer.codebook[2:]:  # each is one of the batch's encoder outputs
        assert (cells - code).abs().sum(1).min() < 1e-6
    assert quantizer.idle_steps.tolist() == [0, 0, 0, 0]
    assert quantizer.ema_count[2:].tolist() == [1.0, 1.0]


def test_perplexity_is_exp_entropy_of_the_code_usage():
    torch.manual_seed(0)
    model = VQVAE(image_shape=[1, 28, 28], num_codes=16, code_dim=4, channels=[8, 8])
    with torch.no_grad():
        model.quantizer.codebook.normal_(0, 0.1)
    x = torch.rand(5, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        _, terms = model.compute_terms(x, None)
        usage = Counter(model.encode(x).flatten().tolist())
    total = sum(usage.values())
    entropy = -sum(c / total * math.log(c / total) for c in usage.values())
    assert len(usage) > 1
    assert float(terms["perplexity"][0]) == pytest.approx(math.exp(entropy), rel=1e-5)
    assert float(terms["codes_used"][0]) == len(usage)


def _tiles(path, rows: int, cols: int = 8) -> np.ndarray:
    """The [rows, cols, 28, 28] grey tiles of a grid PNG (2px padding)."""
    grid = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255
    return np.stack(
        [
            np.stack(
                [
                    grid[
                        PAD + r * (SIDE + PAD) : PAD + r * (SIDE + PAD) + SIDE,
                        PAD + c * (SIDE + PAD) : PAD + c * (SIDE + PAD) + SIDE,
                    ]
                    for c in range(cols)
                ]
            )
            for r in range(rows)
        ]
    )


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A tiny model=vqvae run through train.py's run: 6 epochs of 18 steps (the random
    templates of the test images take a conv autoencoder ~100 steps to pick up)."""
    from fixtures import compose_run

    out = tmp_path_factory.mktemp("vqvae") / "run"
    cfg = compose_run(
        data_root,
        out,
        "model=vqvae",
        "data=mnist",
        "trainer.max_epochs=6",
        "data.batch_size=16",
        "model.optimizer.lr=5e-3",
        "model.dead_code_steps=5",
    )
    return out, run(cfg)


def test_tiny_run_reconstructs_and_reloads_through_the_sample_loader(trained):
    out, metrics = trained
    for key in ("recon", "commitment", "perplexity", "codes_used", "loss_epoch"):
        assert math.isfinite(metrics[f"train/{key}"]), key
    assert metrics["train/codes_restarted"] >= 1  # 512 codes, some idle for 5 steps
    assert 1 < metrics["val/perplexity"] <= 512 and 1 < metrics["val/codes_used"] <= 512
    assert metrics["val/loss"] == pytest.approx(
        metrics["val/recon"] + 0.25 * metrics["val/commitment"], rel=1e-4
    )
    assert "test/recon" in metrics and not (out / "samples.png").exists()  # not generative
    # reconstructions.png: rows of originals above their reconstructions.
    tiles = _tiles(out / "reconstructions.png", rows=16)
    originals, recons = tiles[0::2].reshape(-1, SIDE, SIDE), tiles[1::2].reshape(-1, SIDE, SIDE)
    mse = ((recons - originals) ** 2).mean()
    constant = ((originals - originals.mean()) ** 2).mean()  # the best single grey level
    assert mse < 0.5 * constant, (mse, constant)

    loaded = load_run(out, MODEL_CLASSES)
    assert loaded.name == "vqvae" and not loaded.model.capabilities.generative
    images, _ = loaded.test_split()
    x = images[:16].float() / 255
    reference = VQVAE.load_from_checkpoint(loaded.checkpoint, map_location="cpu").eval()
    assert torch.equal(loaded.model.reconstruct(x), reference.reconstruct(x))
    assert torch.equal(loaded.model.encode(x), reference.encode(x))
    codes = loaded.model.encode(x)
    assert codes.shape == (16, 7, 7) and codes.dtype == torch.long
    # Indices, their vectors and the flattened vectors decode to the same images (up to the
    # rounding of convolutions over another memory layout).
    with torch.no_grad():
        same = loaded.model.decode_images(codes)
        torch.testing.assert_close(
            loaded.model.decode_images(loaded.model.quantizer.lookup(codes)), same
        )
        torch.testing.assert_close(loaded.model.decode_images(loaded.model.encode_mean(x)), same)


def test_sample_tasks_of_an_encoder_work_and_the_others_refuse(trained, tmp_path):
    out, _ = trained
    base = {"run": str(out), "out_dir": str(tmp_path), "n": 2}
    (recon,) = sample({**base, "task": "reconstructions"})
    # n = 2: two rows of two test images, each above its reconstructions.
    assert Image.open(recon).size == (2 * (SIDE + PAD) + PAD, 4 * (SIDE + PAD) + PAD)
    assert sample({**base, "task": "interpolate", "frames": 3})
    with pytest.raises(GenlabError, match="A VQVAE is not a generative model.*can do:"):
        sample({**base, "task": "samples"})
    with pytest.raises(GenlabError, match="task=classes is not available for this vqvae"):
        sample({**base, "task": "classes"})
    with pytest.raises(GenlabError, match="slerp"):
        sample({**base, "task": "interpolate", "mode": "slerp"})


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"codebook_update": "loss"},
        {"channels": [64, 128, 256], "res_blocks": 2, "num_codes": 4096, "code_dim": 16},
        {"channels": [16], "res_blocks": 0, "num_codes": 8, "code_dim": 2},
    ],
)
def test_the_memory_check_counts_no_more_than_a_real_vqvae_holds(fields):
    """genlab.resources' lower bound (what the pre-training memory check multiplies by 16 bytes
    for weights, gradients and Adam's two moments) stays at or below a built VQ-VAE's real
    memory: 16 bytes per parameter plus 4 per float buffer element (the EMA codebook)."""
    from dataclasses import asdict

    from genlab.models.vqvae.spec import VQVAESpec
    from genlab.resources import TRAIN_BYTES_PER_PARAMETER

    spec = VQVAESpec(**fields, image_shape=[1, 28, 28])
    model = VQVAE(spec)
    count, key = VQVAESpec.parameters_lower_bound(asdict(spec), [1, 28, 28])
    real = TRAIN_BYTES_PER_PARAMETER * sum(p.numel() for p in model.parameters())
    real += 4 * sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert 0.5 * real <= count * TRAIN_BYTES_PER_PARAMETER <= real  # a bound, and not a loose one
    assert key.startswith("model.")

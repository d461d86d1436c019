"""What only a GPU can show: every model's training step under CUDA autocast, the samplers and
the U-Net's speed switches on the device, each checked against the same computation on the CPU
or in fp32. Skipped without CUDA; benchmarks/gpu_check.py runs them (`pytest -m cuda`) on a
lent GPU machine."""

from __future__ import annotations

import pytest
import torch

from genlab.models import AE, CVAE, DDPM, VAE, VQVAE
from genlab.nets.unet import UNet

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

TINY_UNET = {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1}
TINY_UNET["attn_resolutions"] = [14]


def randomize_(module: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Random weights everywhere (a fresh DDPM U-Net outputs zeros: nothing to compare)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def models():
    shape = [1, 28, 28]
    return {
        "ae": AE(image_shape=shape),
        "vae": VAE(image_shape=shape),
        "cvae": CVAE(image_shape=shape),
        "vqvae": VQVAE(image_shape=shape),
        "ddpm": DDPM(image_shape=shape, unet=TINY_UNET, ema_decay=None, warmup_steps=1),
    }


@pytest.mark.parametrize("name", ["ae", "vae", "cvae", "vqvae", "ddpm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_training_step_under_autocast_matches_fp32(name, dtype):
    torch.manual_seed(0)
    model = models()[name].cuda().train()
    x = torch.rand(32, 1, 28, 28, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")

    def loss(**autocast):
        # The same noise for the DDPM in both precisions: its loss is a draw otherwise.
        torch.manual_seed(1)
        torch.cuda.manual_seed(1)
        with torch.autocast("cuda", **autocast):
            value, _ = model.compute_terms(x, y)
        return value

    reference = loss(enabled=False)
    mixed = loss(dtype=dtype)
    assert torch.isfinite(mixed), f"{name} {dtype}: loss {mixed}"
    assert abs(mixed.float() - reference) <= 0.05 * abs(reference) + 1e-3
    model.zero_grad()
    mixed.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_deterministic_samplers_draw_the_same_images_on_cuda_and_cpu(sampler):
    model = randomize_(DDPM(image_shape=[1, 28, 28], unet=TINY_UNET, ema_decay=None)).eval()
    x_T = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cpu = model.sample(4, steps=10, sampler=sampler, eta=0.0, x_T=x_T)
        gpu = model.cuda().sample(4, steps=10, sampler=sampler, eta=0.0, x_T=x_T.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=1e-3)


def test_ancestral_sampling_on_cuda_is_seeded_by_its_generator():
    model = DDPM(image_shape=[1, 28, 28], unet=TINY_UNET, ema_decay=None, timesteps=100)
    model = randomize_(model).cuda().eval()

    def draw(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        with torch.no_grad():
            return model.sample(2, steps=None, sampler="ddpm", generator=g)

    a, b, c = draw(0), draw(0), draw(1)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1  # images in [0, 1]


def test_unet_channels_last_and_compile_keep_the_output():
    net = randomize_(UNet(in_channels=3, image_size=32, **TINY_UNET | {"attn_resolutions": [16]}))
    net = net.cuda().eval()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    t = torch.randint(0, 1000, (8,), device="cuda")
    with torch.no_grad():
        reference = net(x, t)
        cl = net.to(memory_format=torch.channels_last)
        torch.testing.assert_close(
            cl(x.contiguous(memory_format=torch.channels_last), t), reference, atol=1e-4, rtol=1e-3
        )
        compiled = torch.compile(net)
        torch.testing.assert_close(compiled(x, t), reference, atol=1e-3, rtol=1e-3)

"""Tests for the DDPM U-Net (genlab.nets.unet)."""

from __future__ import annotations

import pytest
import torch

from genlab.nets.unet import PRESETS, UNet, num_groups, timestep_embedding

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, dropout=0.0)


def randomize_(net: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter: the zero-initialised output convs make a fresh net output 0."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return net


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_paper_cifar10_config_has_about_35_7m_parameters():
    with torch.device("meta"):  # no memory, no init cost
        net = UNet(
            in_channels=3,
            base_channels=128,
            channel_mults=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
            dropout=0.1,
            image_size=32,
        )
    assert count(net) == pytest.approx(35.7e6, rel=0.03)
    assert PRESETS["ddpm_cifar10"]["base_channels"] == 128
    with torch.device("meta"):
        assert count(UNet.from_preset("ddpm_cifar10")) == count(net)


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        (dict(PRESETS["small_28"]), (2, 1, 28, 28)),
        (dict(TINY, in_channels=3, image_size=32, attn_resolutions=(16,)), (2, 3, 32, 32)),
    ],
)
def test_output_shape_equals_input_shape(kwargs, shape):
    net = randomize_(UNet(**kwargs)).eval()
    x = torch.randn(shape)
    out = net(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_fresh_net_outputs_zero_and_time_matters_once_trained():
    # All widths here are <= 32: with one channel per GroupNorm group the time shift added in
    # each residual block would be normalised away and the output would not depend on t.
    net = UNet(in_channels=1, image_size=8, attn_resolutions=(4,), **TINY).eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.all(net(x, torch.tensor([3, 3])) == 0)  # zero-initialised output conv
    randomize_(net)
    a, b = net(x, torch.tensor([3, 3])), net(x, torch.tensor([3, 700]))
    assert torch.equal(a[0], b[0])
    assert not torch.allclose(a[1], b[1])
    torch.testing.assert_close(net(x, 3), a)  # a scalar t is broadcast over the batch


def test_class_conditioning_changes_the_output_and_none_means_null():
    net = randomize_(
        UNet(in_channels=1, image_size=8, attn_resolutions=(4,), num_classes=10, **TINY)
    ).eval()
    assert net.null_label == 10
    x = torch.randn(1, 1, 8, 8).expand(3, 1, 8, 8)
    t = torch.full((3,), 50)
    out = net(x, t, torch.tensor([0, 7, 10]))
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[0], out[2])
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.full((3,), 10)))

    plain = UNet(in_channels=1, image_size=8, attn_resolutions=(4,), **TINY)
    with pytest.raises(ValueError, match="num_classes"):
        plain(x, t, torch.zeros(3, dtype=torch.long))


def test_bad_image_size_raises_a_helpful_error():
    with pytest.raises(ValueError) as err:
        UNet(
            in_channels=1,
            base_channels=8,
            channel_mults=(1, 2, 2, 2),
            image_size=28,
            attn_resolutions=(14,),
        )
    msg = str(err.value)
    assert "image_size=28" in msg and "(1, 2, 2, 2)" in msg and "= 8" in msg
    assert "at most 3 levels" in msg


def test_unreachable_attention_resolution_raises():
    with pytest.raises(ValueError, match=r"\[16\] never occur.*\[28, 14, 7\]"):
        UNet(
            in_channels=1,
            base_channels=8,
            channel_mults=(1, 2, 2),
            image_size=28,
            attn_resolutions=(16,),
        )


@pytest.mark.parametrize(
    "channels,groups",
    [(128, 32), (256, 32), (96, 24), (64, 16), (48, 12), (32, 8), (20, 5), (8, 2), (7, 1), (3, 1)],
)
def test_num_groups_is_largest_divisor_up_to_32_with_groups_of_at_least_4(channels, groups):
    assert num_groups(channels) == groups
    assert channels % groups == 0


def test_timestep_embedding_is_sin_cos_of_geometric_frequencies():
    emb = timestep_embedding(torch.tensor([0, 1, 500]), 16)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    # the first frequency is 1, the last 1/10000
    torch.testing.assert_close(emb[2, 0], torch.sin(torch.tensor(500.0)))
    torch.testing.assert_close(emb[2, 7], torch.sin(torch.tensor(500.0 / 10000)))
    torch.testing.assert_close(emb[:, :8] ** 2 + emb[:, 8:] ** 2, torch.ones(3, 8))


def test_gradients_reach_every_parameter_and_training_lowers_the_loss():
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, attn_resolutions=(4,), num_classes=3, **TINY)
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([1, 10, 100, 900])
    y = torch.tensor([0, 1, 2, 3])
    target = torch.randn(4, 1, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x, t, y), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    # After the zero-initialised convs have moved, every parameter receives gradient.
    unused = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not unused


def test_channels_last_gives_the_same_result():
    net = randomize_(UNet(in_channels=3, image_size=16, attn_resolutions=(8,), **TINY)).eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([5, 400])
    ref = net(x, t)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    net = randomize_(UNet(in_channels=1, image_size=8, attn_resolutions=(4, 8), **TINY)).eval()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([5, 400])
    ref = net(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t)
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05


def test_wrong_input_size_raises():
    net = UNet(in_channels=1, image_size=8, attn_resolutions=(4,), **TINY)
    with pytest.raises(ValueError, match="8x8"):
        net(torch.randn(1, 1, 16, 16), 0)


def test_small_preset_is_cpu_sized():
    with torch.device("meta"):
        net = UNet.from_preset("small_28")
    assert 0.5e6 < count(net) < 2e6
    with pytest.raises(ValueError, match="small_28"):
        UNet.from_preset("huge")

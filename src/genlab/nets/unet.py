"""The DDPM U-Net of Ho et al. 2020 (appendix B), with optional class conditioning.

Layout, for ``channel_mults = (m_0, ..., m_{L-1})`` and ``num_res_blocks = N``::

    t -> sinusoidal(C) -> Linear(C, 4C) -> SiLU -> Linear(4C, 4C) = temb   (+ label embedding)
    x -> conv3x3(C)
    down:   per level i: N x [ResBlock(C*m_i) (+ Attention if the resolution is listed)],
            then a stride-2 conv3x3 except at the last level; every output is kept as a skip
    middle: ResBlock, Attention, ResBlock
    up:     per level i (reversed): N+1 x [concat skip, ResBlock(C*m_i) (+ Attention)],
            then nearest-neighbour x2 + conv3x3 except at level 0
    out:    GroupNorm, SiLU, conv3x3(in_channels)

ResBlock: GroupNorm, SiLU, conv3x3, ``+ Linear(SiLU(temb))``, GroupNorm, SiLU, dropout, conv3x3,
plus a 1x1-conv shortcut when the channel count changes. GroupNorm uses 32 groups, fewer for
narrow layers so that every group keeps >= 4 channels (:func:`num_groups` says why). Attention
is single-head (configurable) self-attention over all pixels, with a residual connection. As in
Ho et al.'s code the last conv of every residual branch and the output conv start at zero, so
each block starts as its shortcut and the untrained network outputs exactly 0.

Presets (see :data:`PRESETS` and :meth:`UNet.from_preset`):

* ``"ddpm_cifar10"``: the paper's CIFAR-10 model, 32x32x3, ~35.7M parameters.
* ``"small_28"``: 28x28x1 (MNIST-like) on a CPU: base 32, mults (1, 2, 2) -> resolutions
  28/14/7 (28 is divisible by 4 but not 8, hence three levels), one res block per level,
  attention at 7x7 only, ~1.1M parameters.

``forward(x, t, y=None)``: ``x`` is ``(B, in_channels, H, W)`` with ``H = W = image_size``;
``t`` holds code timesteps (int or float, shape ``(B,)`` or scalar); ``y`` holds class labels in
``0..num_classes`` where ``num_classes`` itself is the "null" label used for classifier-free
guidance (``y=None`` means all-null). The output has the shape of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from genlab.specs import UNET_DDPM_CIFAR10, UNetSpec

# The U-Net sizes live in genlab.specs with the models' other defaults; the presets add the
# input they were made for.
PRESETS: dict[str, dict] = {
    "ddpm_cifar10": dict(**asdict(UNET_DDPM_CIFAR10), in_channels=3, image_size=32),
    "small_28": dict(**asdict(UNetSpec(attn_resolutions=[7])), in_channels=1, image_size=28),
}
_PAPER = UNET_DDPM_CIFAR10  # the constructor's defaults: Ho et al.'s CIFAR-10 network


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """GroupNorm groups for ``channels``: the largest divisor ``<= max_groups`` that leaves at least
    ``min_group_size`` channels per group (1 group if none does).

    The minimum group size matters: the time (and label) embedding enters a residual block as a
    per-channel shift right before a GroupNorm, and a group of one channel subtracts that shift
    exactly, so the block could not see ``t`` at all. Ho et al.'s smallest group is 4 channels
    (128 channels / 32 groups), so widths >= 128 get the paper's 32 groups unchanged.
    """
    limit = min(max_groups, channels // min_group_size)
    return max([g for g in range(1, limit + 1) if channels % g == 0], default=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of (possibly fractional) timesteps, ``(B, dim)``.

    Frequencies are geometric from 1 to ``1 / max_period``; the first half of the features are
    sines, the second half cosines (zero-padded when ``dim`` is odd). Computed in float32 even
    under autocast, since low-precision ``sin`` of large arguments is meaningless.
    """
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} not divisible by heads {num_heads}")
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # reshape (not view): under channels_last the (C, H*W) layout is not contiguous.
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class ResAttnBlock(nn.Module):
    """A ResBlock, followed by self-attention at the configured resolutions."""

    def __init__(
        self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, attention: bool, heads: int
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, temb_dim, dropout)
        self.attn = AttnBlock(out_ch, heads) if attention else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.res(x, temb)
        return h if self.attn is None else self.attn(h)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Ho et al. 2020 U-Net; see the module docstring for the layout and the presets.

    Args:
        in_channels: image channels; also the output channels.
        base_channels: channels at full resolution (``C``); the time embedding has ``4C``.
        channel_mults: one multiplier per resolution level; ``len - 1`` downsamplings.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: feature-map sizes (e.g. ``16``) that get self-attention after each
            residual block; the middle block always has attention.
        dropout: dropout rate inside residual blocks.
        image_size: input height and width; must be divisible by ``2 ** (len(channel_mults)-1)``.
        num_classes: if set, adds a learned label embedding (``num_classes + 1`` entries, the last
            being the null label) to the time embedding.
        num_heads: attention heads (the paper uses 1).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = _PAPER.base_channels,
        channel_mults: Sequence[int] = tuple(_PAPER.channel_mults),
        num_res_blocks: int = _PAPER.num_res_blocks,
        attn_resolutions: Sequence[int] = tuple(_PAPER.attn_resolutions),
        dropout: float = _PAPER.dropout,
        image_size: int = 32,
        num_classes: int | None = None,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        if not channel_mults or num_res_blocks < 1 or base_channels < 1 or in_channels < 1:
            raise ValueError(
                "need at least one channel multiplier, num_res_blocks >= 1, base_channels >= 1 "
                f"and in_channels >= 1; got channel_mults={channel_mults}, "
                f"num_res_blocks={num_res_blocks}, base_channels={base_channels}, "
                f"in_channels={in_channels}"
            )
        factor = 2 ** (len(channel_mults) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size={image_size} is not divisible by 2**(len(channel_mults)-1) = {factor} "
                f"for channel_mults={channel_mults}: each of the {len(channel_mults) - 1} "
                "downsamplings halves the size exactly. Use fewer multipliers (at most "
                f"{_max_levels(image_size)} levels for {image_size}) or resize/pad the images to a "
                f"multiple of {factor}."
            )
        resolutions = [image_size // 2**i for i in range(len(channel_mults))]
        unreachable = sorted(set(attn_resolutions) - set(resolutions))
        if unreachable:
            raise ValueError(
                f"attn_resolutions {unreachable} never occur: with image_size={image_size} and "
                f"channel_mults={channel_mults} the feature maps are {resolutions}"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")

        self.in_channels = in_channels
        self.image_size = image_size
        self.num_classes = num_classes
        ch = base_channels
        temb_dim = 4 * ch

        self.time_embed = nn.Sequential(
            nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim)
        )
        # The extra last row is the "null" label (classifier-free guidance).
        self.label_embed = (
            nn.Embedding(num_classes + 1, temb_dim) if num_classes is not None else None
        )
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [ch]
        cur = ch
        for level, mult in enumerate(channel_mults):
            out = ch * mult
            attention = resolutions[level] in attn_resolutions
            for _ in range(num_res_blocks):
                self.down.append(ResAttnBlock(cur, out, temb_dim, dropout, attention, num_heads))
                cur = out
                skip_channels.append(cur)
            if level != len(channel_mults) - 1:
                self.down.append(Downsample(cur))
                skip_channels.append(cur)

        self.mid_block1 = ResBlock(cur, cur, temb_dim, dropout)
        self.mid_attn = AttnBlock(cur, num_heads)
        self.mid_block2 = ResBlock(cur, cur, temb_dim, dropout)

        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mults))):
            out = ch * channel_mults[level]
            attention = resolutions[level] in attn_resolutions
            for _ in range(num_res_blocks + 1):
                in_ch = cur + skip_channels.pop()
                self.up.append(ResAttnBlock(in_ch, out, temb_dim, dropout, attention, num_heads))
                cur = out
            if level != 0:
                self.up.append(Upsample(cur))

        self.norm_out = _norm(cur)
        self.conv_out = _zero(nn.Conv2d(cur, in_channels, 3, padding=1))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> UNet:
        """Build a preset from :data:`PRESETS`, with keyword overrides (e.g. ``num_classes=10``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} inputs, got {tuple(x.shape[-2:])}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_embed(timestep_embedding(t, self.time_embed[0].in_features))
        if self.label_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            temb = temb + self.label_embed(y)
        elif y is not None:
            raise ValueError("labels were passed to a UNet built without num_classes")

        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, temb) if isinstance(stage, ResAttnBlock) else stage(h)
            skips.append(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb)), temb)
        for stage in self.up:
            if isinstance(stage, ResAttnBlock):
                h = stage(torch.cat([h, skips.pop()], dim=1), temb)
            else:
                h = stage(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    @property
    def null_label(self) -> int | None:
        """Label index meaning "no class" (``num_classes``), or ``None`` if unconditional."""
        return self.num_classes


def _max_levels(image_size: int) -> int:
    levels = 1
    while image_size % 2**levels == 0:
        levels += 1
    return levels

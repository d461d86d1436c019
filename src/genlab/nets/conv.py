"""Convolutional encoder/decoder for small images (28x28 grey, 32x32 colour).

Each encoder stage halves the resolution with a stride-2 3x3 conv (28 -> 14 -> 7 -> 4,
32 -> 16 -> 8 -> 4); the decoder retraces the exact sizes with transposed convs, so any H x W
round-trips without cropping.

Conditional models pass a condition vector `c` that enters every layer: as constant feature
maps beside the image / feature maps of each conv stage, and concatenated to the input of each
dense layer (see genlab.nets.mlp for why once at the bottom is not enough).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def stage_sizes(size: int, stages: int) -> list[int]:
    sizes = [size]
    for _ in range(stages):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def _run(net: nn.Sequential, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """Apply `net`, feeding the condition to every conv (as maps) and linear layer."""
    for layer in net:
        if c is not None and isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            maps = c.to(h.dtype)[:, :, None, None].expand(-1, -1, *h.shape[2:])
            h = torch.cat([h, maps], dim=1)
        elif c is not None and isinstance(layer, nn.Linear):
            h = torch.cat([h, c.to(h.dtype)], dim=1)
        h = layer(h)
    return h


class ConvEncoder(nn.Module):
    """Image [+ condition] -> feature vector of size `fc_dim`."""

    def __init__(
        self, image_shape: Sequence[int], channels: Sequence[int], fc_dim: int, cond_dim: int = 0
    ):
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(c_in + cond_dim, c_out, 3, stride=2, padding=1), nn.SiLU()]
        h_out, w_out = stage_sizes(h, len(channels))[-1], stage_sizes(w, len(channels))[-1]
        flat = channels[-1] * h_out * w_out
        layers += [nn.Flatten(), nn.Linear(flat + cond_dim, fc_dim), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = fc_dim

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return _run(self.net, x, c)


class ConvDecoder(nn.Module):
    """Latent vector of size `in_dim` [+ condition] -> image-shaped logits."""

    def __init__(
        self,
        in_dim: int,
        image_shape: Sequence[int],
        channels: Sequence[int],
        fc_dim: int,
        cond_dim: int = 0,
    ):
        super().__init__()
        c, h, w = image_shape
        hs, ws = stage_sizes(h, len(channels)), stage_sizes(w, len(channels))
        self.start_shape = (channels[-1], hs[-1], ws[-1])
        self.fc = nn.Sequential(
            nn.Linear(in_dim + cond_dim, fc_dim),
            nn.SiLU(),
            nn.Linear(fc_dim + cond_dim, channels[-1] * hs[-1] * ws[-1]),
            nn.SiLU(),
        )
        outs = [*reversed(channels[:-1]), c]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs, strict=True)):
            # A stride-2 transposed conv maps n -> 2n - 1 + output_padding; pick the padding
            # that lands on the encoder's size at this stage.
            h_to, w_to = hs[-2 - i], ws[-2 - i]
            pad = (h_to - (2 * hs[-1 - i] - 1), w_to - (2 * ws[-1 - i] - 1))
            layers.append(
                nn.ConvTranspose2d(c_in + cond_dim, c_out, 3, 2, padding=1, output_padding=pad)
            )
            if c_out != c or i < len(channels) - 1:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return _run(self.net, _run(self.fc, z, c).view(-1, *self.start_shape), c)

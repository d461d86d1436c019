"""Fully connected encoder/decoder pair. With hidden=[128, 64, 36, 18] and a 9-d latent this is
the classic MLP autoencoder (784-128-64-36-18-9 and back; the sigmoid lives in the
likelihood, which reads the decoder's output as logits).

Conditional models (CVAE) pass a condition vector `c` (the encoded label) that is concatenated
to the input of every linear layer, not only the first: a label seen once at the bottom of a
deep network is easily outweighed by the latent code, and then a "class-chosen" sample follows
whatever class z happens to encode (see tests/test_models.py and docs/experiments.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def _run(net: nn.Sequential, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """Apply `net`, feeding the condition to every linear layer."""
    for layer in net:
        if c is not None and isinstance(layer, nn.Linear):
            h = torch.cat([h, c.to(h.dtype)], dim=1)
        h = layer(h)
    return h


class MLPEncoder(nn.Module):
    """Image [+ condition] -> feature vector of size `out_dim` (the last hidden width)."""

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], cond_dim: int = 0):
        super().__init__()
        widths = [math.prod(image_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in + cond_dim, w_out), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return _run(self.net, x, c)


class MLPDecoder(nn.Module):
    """Latent vector of size `in_dim` [+ condition] -> image-shaped logits, mirroring the
    encoder's widths."""

    def __init__(
        self, in_dim: int, image_shape: Sequence[int], hidden: Sequence[int], cond_dim: int = 0
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        widths = [in_dim, *reversed(hidden)]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in + cond_dim, w_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1] + cond_dim, math.prod(image_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return _run(self.net, z, c).view(-1, *self.image_shape)

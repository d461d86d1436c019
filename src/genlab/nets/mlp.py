"""Fully connected encoder/decoder pair. With hidden=[128, 64, 36, 18] and a 9-d latent this is
exactly seed 001's autoencoder (784-128-64-36-18-9 and back; the sigmoid lives in the
likelihood, which reads the decoder's output as logits)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLPEncoder(nn.Module):
    """Image -> feature vector of size `out_dim` (the last hidden width)."""

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int]):
        super().__init__()
        widths = [math.prod(image_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """Vector of size `in_dim` -> image-shaped logits, mirroring the encoder's widths."""

    def __init__(self, in_dim: int, image_shape: Sequence[int], hidden: Sequence[int]):
        super().__init__()
        self.image_shape = tuple(image_shape)
        widths = [in_dim, *reversed(hidden)]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], math.prod(image_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.image_shape)

"""Pick the encoder/decoder pair named by the model config's `arch` key."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from genlab.nets.conv import ConvDecoder, ConvEncoder
from genlab.nets.mlp import MLPDecoder, MLPEncoder

ARCHS = ("mlp", "conv")


def build_backbone(
    arch: str,
    image_shape: Sequence[int],
    latent_dim: int,
    mlp: dict,
    conv: dict,
    cond_dim: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """Return (encoder with `.out_dim`, decoder taking a `latent_dim` code); both take a
    condition vector of size `cond_dim` at every layer when it is > 0."""
    if arch == "mlp":
        return MLPEncoder(image_shape, mlp["hidden"], cond_dim), MLPDecoder(
            latent_dim, image_shape, mlp["hidden"], cond_dim
        )
    if arch == "conv":
        return ConvEncoder(image_shape, conv["channels"], conv["fc_dim"], cond_dim), ConvDecoder(
            latent_dim, image_shape, conv["channels"], conv["fc_dim"], cond_dim
        )
    raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")

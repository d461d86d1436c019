"""Pick the encoder/decoder pair named by the model config's `arch` key."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from genlab.nets.conv import ConvDecoder, ConvEncoder
from genlab.nets.mlp import MLPDecoder, MLPEncoder

ARCHS = ("mlp", "conv")


def build_backbone(
    arch: str, image_shape: Sequence[int], decoder_in: int, mlp: dict, conv: dict
) -> tuple[nn.Module, nn.Module]:
    """Return (encoder with `.out_dim`, decoder taking `decoder_in` features)."""
    if arch == "mlp":
        return MLPEncoder(image_shape, mlp["hidden"]), MLPDecoder(
            decoder_in, image_shape, mlp["hidden"]
        )
    if arch == "conv":
        return ConvEncoder(image_shape, conv["channels"], conv["fc_dim"]), ConvDecoder(
            decoder_in, image_shape, conv["channels"], conv["fc_dim"]
        )
    raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")

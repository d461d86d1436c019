"""model=vqvae's spec: keys, defaults, their meaning and rules, and its memory estimate.
Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genlab.specs import (
    NON_NEGATIVE,
    POSITIVE_INT,
    ConvSpec,
    LatentSpec,
    ModelSpec,
    Rule,
    ints,
    is_int,
    is_number,
    largest,
    one_of,
    spec_key,
)


@dataclass
class VQVAESpec(ModelSpec):
    """VQ-VAE (van den Oord et al. 2017): conv encoder to a grid of code vectors (7x7 for 28x28),
    each snapped to its nearest codebook entry; not generative on its own (no prior)."""

    _target_: str = "genlab.models.VQVAE"
    name: str = "vqvae"
    # Stride-2 conv stages of the encoder (the decoder mirrors them): 28 -> 14 -> 7.
    channels: list[int] = spec_key(
        [32, 64], ConvSpec.__dataclass_fields__["channels"].metadata["rule"]
    )
    res_blocks: int = spec_key(
        1, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0")
    )  # paper: 2
    num_codes: int = spec_key(512, POSITIVE_INT)  # codebook size K (paper: 512)
    code_dim: int = spec_key(64, POSITIVE_INT)  # dimension D of each code vector (paper: 64)
    beta_commit: float = spec_key(0.25, NON_NEGATIVE)  # commitment weight (paper: 0.25)
    # How the codebook learns: ema (moving averages of the encoder outputs each code is chosen
    # for, decay codebook_decay, Laplace-smoothed counts) | loss (||sg(z_e) - e||^2 by gradient).
    codebook_update: str = spec_key("ema", one_of("ema", "loss"))
    codebook_decay: float = spec_key(
        0.99, Rule(lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)")
    )
    codebook_eps: float = spec_key(1e-5, Rule(lambda v: is_number(v) and v > 0, "a number > 0"))
    # A code chosen by no encoder output for this many training steps is re-initialised from a
    # random encoder output of the batch (0: never).
    dead_code_steps: int = spec_key(100, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0"))
    # Decoder likelihood p(x|z_q) and its sigma: the latent models' fields (LatentSpec).
    likelihood: str = LatentSpec.__dataclass_fields__["likelihood"]
    gaussian_sigma: float | None = LatentSpec.__dataclass_fields__["gaussian_sigma"]

    is_autoencoder = True

    @classmethod
    def parameters_lower_bound(cls, model: Mapping[str, Any], shape: list[int]) -> tuple[int, str]:
        channels = ints(model.get("channels"))
        code_dim = int(model.get("code_dim") or 0)
        widest = max(channels, default=0)
        codebook_share = 2 if model.get("codebook_update", "ema") == "ema" else 1
        # The stride-2 3x3 convs of the encoder and their transposed mirror in the decoder, the
        # 3x3 conv from the code grid back to the last width, the residual blocks' 3x3 convs,
        # and the codebook: a parameter when it learns by gradient; with EMA updates two
        # buffers (codes and moving sums, 8 bytes an entry), counted as half a parameter.
        ins = [int(shape[0]) if shape else 1, *channels[:-1]]
        convs = sum(2 * 9 * a * b for a, b in zip(ins, channels, strict=False))
        return largest(
            [
                (convs, "model.channels"),
                (9 * code_dim * channels[-1] if channels else 0, "model.code_dim"),
                (int(model.get("num_codes") or 0) * code_dim // codebook_share, "model.num_codes"),
                (2 * int(model.get("res_blocks") or 0) * 9 * widest * widest, "model.res_blocks"),
            ]
        )


GENLAB_MODELS = (VQVAESpec,)

"""The encoder/decoder machinery shared by AE, VAE and CVAE.

A LatentModel owns an encoder (image -> features), a head (features [+ label] -> latent
parameters), a decoder ([z + label] -> logits) and the decoder likelihood. Subclasses only say
what the head outputs and how the loss is made.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from genlab.models.base import Capabilities, GenerativeModule
from genlab.nets.backbone import build_backbone
from genlab.objectives import reconstruction_nll
from genlab.specs import LatentSpec


class LatentModel(GenerativeModule):
    head_factor = 1  # latent parameters per latent dim (1 for a code, 2 for mean + log-variance)
    networks = ("encoder", "decoder")
    spec_class = LatentSpec

    def __init__(self, spec: LatentSpec | None = None, **fields):
        super().__init__(spec, **fields)
        spec = self.spec
        self.num_classes, self.latent_dim = spec.num_classes, spec.latent_dim
        self.likelihood, self.reduction = spec.likelihood, spec.reduction
        self.input_dim = math.prod(self.image_shape)
        cond_dim = self.condition_dim()
        self.encoder, self.decoder = build_backbone(
            spec.arch,
            self.image_shape,
            spec.latent_dim,
            dataclasses.asdict(spec.mlp),
            dataclasses.asdict(spec.conv),
            cond_dim,
        )
        self.head = nn.Linear(self.encoder.out_dim + cond_dim, self.head_factor * spec.latent_dim)
        channels = self.image_shape[0]
        if spec.likelihood == "gaussian" and spec.gaussian_sigma is None:
            self.log_sigma = nn.Parameter(torch.full((channels,), math.log(0.1)))
        else:
            sigma = spec.gaussian_sigma if spec.gaussian_sigma is not None else 1.0
            self.register_buffer("log_sigma", torch.full((channels,), math.log(sigma)))

    @property
    def capabilities(self) -> Capabilities:
        gaussian = self.head_factor == 2  # mean and log-variance: a Gaussian posterior and prior
        return Capabilities(
            generative=gaussian,
            encoder=True,
            conditional=self.condition_dim() > 0,
            diffusion=False,
            gaussian_latent=gaussian,
            latent_dim=self.latent_dim,
        )

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None):
        raise NotImplementedError

    def encode_mean(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        code = self.encode(x, y)
        return code[0] if self.head_factor == 2 else code

    # Conditioning hooks: unconditional by default, CVAE overrides both.
    def condition_dim(self) -> int:
        return 0

    def condition(self, y: torch.Tensor | None) -> torch.Tensor | None:
        return None

    def encode_head(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.condition(y)
        features = self.encoder(x, c)
        return self.head(features if c is None else torch.cat([features, c.to(features.dtype)], 1))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder logits for latent codes z (and labels y for conditional models, which the
        decoder sees at every layer)."""
        return self.decoder(z, self.condition(y))

    def decode_images(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images in [0, 1] for latent codes z."""
        return torch.sigmoid(self.decode(z, y).float())

    def recon_terms(self, logits: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "recon": reconstruction_nll(logits, x, self.likelihood, self.log_sigma),
            "mse": (torch.sigmoid(logits.float()) - x).pow(2).flatten(1).mean(1),
        }

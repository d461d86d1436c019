"""Deterministic autoencoder: x -> z -> x_hat, trained on reconstruction alone."""

from __future__ import annotations

import torch

from genlab.models.ae.spec import AESpec
from genlab.models.latent import LatentModel
from genlab.objectives import training_objective
from genlab.viz.grids import originals_above_reconstructions


class AE(LatentModel):
    metric_names = ("loss", "recon", "mse")

    spec_class = AESpec

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_head(x, y)

    def compute_terms(self, x, y):
        terms = self.recon_terms(self.decode(self.encode(x)), x)
        loss = training_objective(
            terms["recon"],
            None,
            beta=0.0,
            reduction=self.reduction,
            input_dim=self.input_dim,
            latent_dim=self.latent_dim,
        )
        return loss, terms

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode_images(self.encode(x))

    def preview_images(self, x, y):
        return {"reconstructions": originals_above_reconstructions(x, self.reconstruct(x))}

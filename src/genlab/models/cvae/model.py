"""Conditional VAE (Sohn et al. 2015): the label y enters q(z|x, y), p(x|z, y) and the prior
p(z|y), so sampling can be asked for a chosen class.

The prior is learned per class, N(mu_y, diag(sigma_y^2)) (Sohn et al.'s conditional prior
network, here a table with one mean and log-variance per class, starting at N(0, I)). With the
standard normal for every class instead, the encoder keeps class information in z (it costs
little KL), the decoder learns to follow z more than the label, and z ~ N(0, I) asked for class k
decodes to other classes (docs/experiments.md, "Class-chosen samples (CVAE)"). With p(z|y)
the latent regions of the classes may differ, and a sample for class k is drawn from class k's
own region. The ELBO stays the true bound on log p(x|y), with the KL taken against p(z|y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlab.models.cvae.spec import CVAESpec
from genlab.models.vae.model import VAE


class CVAE(VAE):
    spec_class = CVAESpec

    def __init__(self, spec: CVAESpec | None = None, **fields):
        super().__init__(spec, **fields)
        # Label index num_classes is "no label" (label_dropout, guidance): the one-hot code of
        # zeros, an embedding row and a prior row of its own.
        self.null_label = self.num_classes
        if self.spec.label_encoding == "embedding":
            self.label_embedding = nn.Embedding(self.num_classes + 1, self.spec.label_embed_dim)
        # Mean and log-variance of p(z|y) per class (and for no label); zeros = N(0, I) at first.
        self.class_prior = nn.Embedding(self.num_classes + 1, 2 * self.latent_dim)
        nn.init.zeros_(self.class_prior.weight)
        self.guidance_scale = self.spec.guidance_scale
        if self.guidance_scale and not self.spec.label_dropout:
            raise ValueError(
                f"model.guidance_scale={self.guidance_scale} compares the decoder with and without "
                "the label, but with model.label_dropout=0 it never learns without one: train "
                "with model.label_dropout=0.1 (say), or set model.guidance_scale=0."
            )

    def compute_terms(self, x, y):
        if self.training and self.spec.label_dropout:
            dropped = torch.rand(y.shape, device=y.device) < self.spec.label_dropout
            y = torch.where(dropped, torch.full_like(y, self.null_label), y)
        return super().compute_terms(x, y)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        generator=None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """n images for z ~ p(z|y); with guidance w > 0 the decoder logits are pushed away from
        the label-free decoder's: (1 + w) l(z, y) - w l(z, null)."""
        w = self.guidance_scale if guidance_scale is None else guidance_scale
        if labels is None:
            raise ValueError("a CVAE needs labels: pass y (or labels=) with one class per image")
        eps = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        z = self.latent_from_noise(eps, labels)
        logits = self.decode(z, labels).float()
        if w:
            unlabelled = self.decode(z, torch.full_like(labels, self.null_label)).float()
            logits = logits + w * (logits - unlabelled)
        return torch.sigmoid(logits)

    def prior(self, y: torch.Tensor | None = None):
        if y is None:
            raise ValueError("a CVAE needs labels: pass y (or labels=) with one class per image")
        mu, logvar = self.class_prior(y.long()).chunk(2, dim=1)
        return mu, logvar

    def condition_dim(self) -> int:
        # Read while the parent builds the networks: from the spec, set first.
        spec = self.spec
        return spec.num_classes if spec.label_encoding == "onehot" else spec.label_embed_dim

    def condition(self, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("a CVAE needs labels: pass y (or labels=) with one class per image")
        if self.spec.label_encoding == "onehot":  # the null label's code is all zeros
            return F.one_hot(y.long(), self.num_classes + 1)[:, : self.num_classes].float()
        return self.label_embedding(y.long())

    def preview_labels(self, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.device) % self.num_classes

"""The beta-TCVAE's LightningModule: genlab's VAE with the loss of Chen et al. (2018).

Per image, with z ~ q(z|x) drawn once and q(z) the aggregate posterior,
    loss = recon + alpha * [log q(z|x) - log q(z)] + beta * [log q(z) - sum_d log q(z_d)]
                 + gamma * [sum_d log q(z_d) - log p(z)],
the three brackets summing to the sampled KL(q(z|x) || p(z)). log q(z) and log q(z_d) are
estimated over the minibatch by minibatch-weighted sampling (the paper's section 4.1):
    log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N M),
with M the batch size and N the size of the training split.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal

from betatcvae import BetaTCVAESpec
from genlab.models.vae.model import VAE


class BetaTCVAE(VAE):
    spec_class = BetaTCVAESpec
    metric_names = (*VAE.metric_names, "mi", "tc", "dim_kl")

    def __init__(self, spec: BetaTCVAESpec | None = None, **fields):
        super().__init__(spec, **fields)
        size = self.spec.dataset_size or 0
        # Kept in checkpoints, so a loaded model scores test images with its training N.
        self.register_buffer("dataset_size", torch.tensor(float(size)))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not self.spec.dataset_size and self.trainer.datamodule is not None:
            images, _ = self.trainer.datamodule.splits["train"]
            self.dataset_size.fill_(float(len(images)))

    def decomposed_kl(self, z, mu, logvar):
        """(mutual information, total correlation, dimension-wise KL) per image [B]."""
        z, mu, std = z.float(), mu.float(), (0.5 * logvar.float()).exp()
        batch = len(z)
        log_norm = math.log(max(float(self.dataset_size), batch) * batch)
        log_q_z_given_x = Normal(mu, std).log_prob(z).sum(1)
        # pairs[i, j, d] = log q(z_i,d | x_j)
        pairs = Normal(mu.unsqueeze(0), std.unsqueeze(0)).log_prob(z.unsqueeze(1))
        log_q_z = torch.logsumexp(pairs.sum(2), dim=1) - log_norm
        log_prod_q_zd = (torch.logsumexp(pairs, dim=1) - log_norm).sum(1)
        log_p_z = Normal(0.0, 1.0).log_prob(z).sum(1)
        return log_q_z_given_x - log_q_z, log_q_z - log_prod_q_zd, log_prod_q_zd - log_p_z

    def compute_terms(self, x, y):
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        terms = self.recon_terms(self.decode(z, y), x)
        terms["kl"] = self.kl_terms(mu, logvar, y)
        terms["elbo"] = -(terms["recon"] + terms["kl"])
        terms["mi"], terms["tc"], terms["dim_kl"] = self.decomposed_kl(z, mu, logvar)
        spec = self.spec
        loss = terms["recon"] + (
            spec.alpha * terms["mi"] + spec.beta * terms["tc"] + spec.gamma * terms["dim_kl"]
        )
        return loss.mean(), terms

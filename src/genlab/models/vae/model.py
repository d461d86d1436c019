"""Variational autoencoder (Kingma & Welling 2014) with a beta-weighted KL (Higgins et al. 2017).

q(z|x) = N(mu(x), diag(sigma^2(x))), p(z) = N(0, I), p(x|z) from the configured likelihood.
The logged ELBO is always the true one, -(recon + kl) in nats per image, whatever beta and
the loss reduction are.

With `iwae_k_train` = K > 1 the model trains on the importance-weighted bound (IWAE, Burda et
al. 2016), log (1/K) sum_k p(x, z_k) / q(z_k|x) with K reparameterised draws z_k per image,
which is >= the ELBO and tightens with K; it is logged as `*/iwae_bound` and the loss is its
negative. It has no KL term to weight, so it needs beta = 1 and reduction = sum.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal

from genlab import GenlabError
from genlab.metrics.likelihood import iwae_log_likelihood, nats_to_bits_per_dim
from genlab.models.latent import LatentModel
from genlab.models.vae.spec import VAESpec
from genlab.objectives import (
    gaussian_kl,
    gaussian_kl_between,
    normalised_beta,
    training_objective,
)
from genlab.viz.grids import originals_above_reconstructions


class VAE(LatentModel):
    metric_names = ("loss", "recon", "kl", "elbo", "mse", "nll", "bpd", "iwae_bound")
    head_factor = 2

    spec_class = VAESpec

    def __init__(self, spec: VAESpec | None = None, **fields):
        super().__init__(spec, **fields)
        spec = self.spec
        self.beta = spec.beta
        self.iwae_k = {"val": spec.iwae_k_val, "test": spec.iwae_k_test}
        self.beta_norm = normalised_beta(self.beta, self.reduction, self.input_dim, self.latent_dim)
        self.iwae_k_train = spec.iwae_k_train
        if self.iwae_k_train > 1 and (self.beta != 1 or self.reduction != "sum"):
            # genlab.run_rules refuses this with the config's keys; this is for library callers.
            raise GenlabError(
                f"iwae_k_train={self.iwae_k_train} trains on the IWAE bound, which has no KL "
                "term to weight: it needs beta=1 and reduction=sum."
            )

    def on_train_start(self) -> None:
        # Logged beside the hyperparameters so runs compare across loss reductions.
        for logger in self.loggers:
            logger.log_hyperparams({"beta_norm": self.beta_norm})

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Posterior parameters (mu, logvar) of q(z | x[, y])."""
        mu, logvar = self.encode_head(x, y).chunk(2, dim=1)
        return mu, logvar

    def prior(self, y: torch.Tensor | None = None):
        """(mean, log-variance) of the prior p(z[|y]), or None for the standard normal."""
        return None

    def latent_from_noise(self, eps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Map standard-normal draws to draws of the prior p(z[|y]): z = mu + sigma * eps (the
        identity for the standard normal). Every prior sample goes through here."""
        prior = self.prior(y)
        if prior is None:
            return eps
        mu, logvar = prior
        return mu + (0.5 * logvar).exp() * eps

    def compute_terms(self, x, y):
        mu, logvar = self.encode(x, y)
        if self.iwae_k_train > 1:
            return self._iwae_terms(x, y, mu, logvar)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation trick
        terms = self.recon_terms(self.decode(z, y), x)
        terms["kl"] = self.kl_terms(mu, logvar, y)
        terms["elbo"] = -(terms["recon"] + terms["kl"])
        loss = training_objective(
            terms["recon"],
            terms["kl"],
            beta=self.beta,
            reduction=self.reduction,
            input_dim=self.input_dim,
            latent_dim=self.latent_dim,
        )
        return loss, terms

    def kl_terms(self, mu, logvar, y):
        """KL(q(z|x[, y]) || p(z[|y])) per image, in closed form."""
        prior = self.prior(y)
        if prior is None:
            return gaussian_kl(mu.float(), logvar.float())
        return gaussian_kl_between(mu.float(), logvar.float(), prior[0].float(), prior[1].float())

    def log_weights(self, x, y, mu, logvar, eps):
        """Importance weights log p(x|z_k) + log p(z_k[|y]) - log q(z_k|x[, y]) [K, B] for the
        draws z_k = mu + sigma * eps_k (eps [K, B, latent]), and the reconstruction terms of
        each draw ({name: [K, B]}). Reparameterised: gradients reach the encoder through z_k."""
        k, n = eps.shape[:2]
        std = (0.5 * logvar).exp()
        z = mu + std * eps
        log_q = Normal(mu.float(), std.float(), validate_args=False).log_prob(z.float()).sum(-1)
        prior = self.prior(y)
        if prior is None:
            log_p = Normal(0.0, 1.0, validate_args=False).log_prob(z.float()).sum(-1)
        else:
            p = Normal(prior[0].float(), (0.5 * prior[1].float()).exp(), validate_args=False)
            log_p = p.log_prob(z.float()).sum(-1)
        flat_y = None if y is None else y.repeat(k)  # row j * B + b holds image b's draw j
        logits = self.decode(z.reshape(k * n, -1), flat_y)
        recon = self.recon_terms(logits, x.repeat(k, *([1] * (x.dim() - 1))))
        recon = {name: v.view(k, n) for name, v in recon.items()}
        return -recon["recon"] + log_p - log_q, recon

    def _iwae_terms(self, x, y, mu, logvar):
        k = self.iwae_k_train
        eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
        log_w, recon = self.log_weights(x, y, mu, logvar, eps)
        bound = torch.logsumexp(log_w, dim=0) - math.log(k)
        # The ELBO beside it: the reconstruction averaged over the same K draws, the KL exact.
        terms = {name: v.mean(0) for name, v in recon.items()}
        terms["kl"] = self.kl_terms(mu, logvar, y)
        terms["elbo"] = -(terms["recon"] + terms["kl"])
        terms["iwae_bound"] = bound
        return -bound.mean(), terms

    def eval_terms(self, stage, x, y):
        """Importance-sampled NLL (IWAE bound, K = iwae_k_val / iwae_k_test) in nats per image,
        and in bits per dimension of the 8-bit images."""
        k = self.iwae_k.get(stage, 0)
        if not k:
            return {}
        nll = -iwae_log_likelihood(self, x, y if self.condition_dim() else None, k=k)
        if self.likelihood == "bernoulli":
            bpd = nll / (self.input_dim * math.log(2))
        else:
            bpd = nats_to_bits_per_dim(nll, self.input_dim)
        return {"nll": nll, "bpd": bpd}

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """n images (means of p(x|z)) for z drawn from the prior."""
        eps = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        return self.decode_images(self.latent_from_noise(eps, labels), labels)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded posterior means: the model's best reconstruction of x."""
        return self.decode_images(self.encode(x, y)[0], y)

    def preview_images(self, x, y):
        generator = torch.Generator(device=self.device).manual_seed(0)
        labels = self.preview_labels(len(x))
        return {
            "samples": self.sample(len(x), labels, generator=generator),
            "reconstructions": originals_above_reconstructions(x, self.reconstruct(x, y)),
        }

    def preview_labels(self, n: int) -> torch.Tensor | None:
        return None

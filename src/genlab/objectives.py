"""The terms of the (beta-)VAE objective, per image, in nats.

Every function returns one value per image (summed over pixels or latent dims); how the terms are
weighted and reduced into a training loss is decided in one place, `training_objective`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LIKELIHOODS = ("bernoulli", "gaussian")
REDUCTIONS = ("sum", "mean")


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ) per image, summed over latent dims.

    The closed form is 1/2 * sum(sigma^2 + mu^2 - 1 - log sigma^2). (A common mistake writes
    sigma^2 + mu^2 - log sigma - 1/2, which is not the KL: it is not zero at mu=0, sigma=1.)
    """
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).flatten(1).sum(1)


def gaussian_kl_between(
    mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor, prior_logvar: torch.Tensor
) -> torch.Tensor:
    """KL( N(mu, diag(e^logvar)) || N(prior_mu, diag(e^prior_logvar)) ) per image, summed over
    latent dims: 1/2 * sum(log(s_p^2 / s^2) + (s^2 + (mu - mu_p)^2) / s_p^2 - 1). With the
    standard normal as the prior it is `gaussian_kl`."""
    ratio = (logvar - prior_logvar).exp()
    mean_term = (mu - prior_mu).pow(2) * (-prior_logvar).exp()
    return 0.5 * (ratio + mean_term - 1.0 - (logvar - prior_logvar)).flatten(1).sum(1)


def reconstruction_nll(
    logits: torch.Tensor,
    x: torch.Tensor,
    likelihood: str,
    log_sigma: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log p(x | z) per image, summed over pixels, from the decoder's output logits.

    bernoulli: p(x|z) = prod Bernoulli(x; sigmoid(logits)) (grey levels in [0, 1] as the
        usual relaxation; exact for binarised data).
    gaussian: p(x|z) = prod N(x; sigmoid(logits), sigma^2), sigma per channel (`log_sigma`,
        shape [C]); a density, so the value can be negative.
    """
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none")
    elif likelihood == "gaussian":
        mean = torch.sigmoid(logits.float())
        log_sigma = log_sigma.view(1, -1, *([1] * (x.dim() - 2)))
        nll = 0.5 * ((x - mean) / log_sigma.exp()).pow(2) + log_sigma + 0.5 * math.log(2 * math.pi)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
    return nll.flatten(1).sum(1)


def training_objective(
    recon: torch.Tensor,
    kl: torch.Tensor | None,
    *,
    beta: float,
    reduction: str,
    input_dim: int,
    latent_dim: int,
) -> torch.Tensor:
    """Batch loss from per-image terms.

    sum:  mean_batch( recon + beta * kl )                          (beta=1: negative ELBO)
    mean: mean_batch( recon / input_dim + beta * kl / latent_dim )  (per-pixel / per-latent)
    """
    if reduction == "sum":
        loss = recon.mean()
        return loss if kl is None else loss + beta * kl.mean()
    if reduction == "mean":
        loss = recon.mean() / input_dim
        return loss if kl is None else loss + beta * kl.mean() / latent_dim
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")


def normalised_beta(beta: float, reduction: str, input_dim: int, latent_dim: int) -> float:
    """beta_norm = beta * latent_dim / input_dim (Higgins et al. 2017), the KL weight per latent
    dim relative to the reconstruction per pixel: the same number under both reductions."""
    return beta * latent_dim / input_dim if reduction == "sum" else beta

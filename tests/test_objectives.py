"""The loss terms against independent computations with torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from genlab.objectives import (
    gaussian_kl,
    normalised_beta,
    reconstruction_nll,
    training_objective,
)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert torch.allclose(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))
    # seed 001's printed formula (sigma^2 + mu^2 - log sigma - 1/2) is not this KL
    sigma = (0.5 * logvar).exp()
    seed_formula = (sigma**2 + mu**2 - sigma.log() - 0.5).sum(1)
    assert not torch.allclose(seed_formula, expected)


def test_bernoulli_nll_matches_log_prob():
    torch.manual_seed(1)
    logits = torch.randn(4, 1, 5, 5)
    x = (torch.rand(4, 1, 5, 5) > 0.5).float()
    expected = -Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_nll(logits, x, "bernoulli"), expected)


def test_gaussian_nll_matches_log_prob_per_channel_sigma():
    torch.manual_seed(2)
    logits, x = torch.randn(3, 3, 4, 4), torch.rand(3, 3, 4, 4)
    log_sigma = torch.tensor([-1.0, -2.0, 0.5])
    sigma = log_sigma.exp().view(1, 3, 1, 1)
    expected = -Normal(torch.sigmoid(logits), sigma).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_nll(logits, x, "gaussian", log_sigma), expected)


def test_unknown_likelihood_raises():
    with pytest.raises(ValueError, match="bernoulli"):
        reconstruction_nll(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "poisson")


def test_reductions_and_normalised_beta_agree():
    recon, kl = torch.tensor([700.0, 500.0]), torch.tensor([20.0, 30.0])
    d, m = 784, 16
    assert training_objective(recon, kl, beta=1.0, reduction="sum", input_dim=d, latent_dim=m) == (
        pytest.approx(625.0)
    )
    # A per-pixel/per-latent objective with beta b equals the summed one with b * d / m,
    # up to the 1/d scale, and both have the same normalised beta.
    b = 0.025
    mean_loss = training_objective(recon, kl, beta=b, reduction="mean", input_dim=d, latent_dim=m)
    sum_loss = training_objective(
        recon, kl, beta=b * d / m, reduction="sum", input_dim=d, latent_dim=m
    )
    assert float(mean_loss) * d == pytest.approx(float(sum_loss))
    assert normalised_beta(b, "mean", d, m) == pytest.approx(
        normalised_beta(b * d / m, "sum", d, m)
    )
    assert normalised_beta(1.0, "sum", d, m) == pytest.approx(m / d)


def test_vae_terms_form_the_true_elbo():
    from genlab.models import VAE

    torch.manual_seed(0)
    model = VAE(image_shape=[1, 28, 28], latent_dim=4, beta=1.0)
    x = (torch.rand(6, 1, 28, 28) > 0.5).float()  # binary, so Bernoulli.log_prob accepts it
    torch.manual_seed(5)
    loss, terms = model.compute_terms(x, None)
    torch.testing.assert_close(terms["elbo"], -(terms["recon"] + terms["kl"]))
    torch.testing.assert_close(loss, -terms["elbo"].mean())
    # Recompute independently with the same reparameterisation noise.
    torch.manual_seed(5)
    mu, logvar = model.encode(x)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    p_x = Bernoulli(logits=model.decode(z))
    q_z = Normal(mu, (0.5 * logvar).exp())
    expected_elbo = p_x.log_prob(x).flatten(1).sum(1) - kl_divergence(q_z, Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(terms["elbo"], expected_elbo, rtol=1e-4, atol=1e-3)
    # With beta != 1 only the loss changes, never the logged ELBO.
    model.beta = 4.0
    torch.manual_seed(5)
    loss4, terms4 = model.compute_terms(x, None)
    torch.testing.assert_close(terms4["elbo"], terms["elbo"])
    assert float(loss4) == pytest.approx(
        float(terms["recon"].mean() + 4 * terms["kl"].mean()), rel=1e-5
    )
    assert math.isfinite(float(loss4))

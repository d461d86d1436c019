"""model.iwae_k_train (issue 16 item 3): the VAE and CVAE trained on the importance-weighted
bound of Burda et al. 2016, checked against a brute-force log-mean-exp of the same draws."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from genlab import GenlabError
from genlab.models import CVAE, VAE
from genlab.run_rules import validate_run_config
from genlab.training import run

TINY = {"image_shape": [1, 4, 4], "latent_dim": 2, "mlp": {"hidden": [8]}}


def _models(k: int):
    """A tiny VAE and a CVAE whose class prior is moved off N(0, I), so p(z|y) matters."""
    torch.manual_seed(0)
    vae = VAE(**TINY, iwae_k_train=k)
    # No label dropout: the bound is compared for the labels given (dropout would replace some
    # by the null label in training mode).
    cvae = CVAE(
        **TINY, arch="mlp", num_classes=3, iwae_k_train=k, label_dropout=0.0, guidance_scale=0.0
    )
    with torch.no_grad():
        cvae.class_prior.weight.normal_(0, 0.5)
    return vae, cvae


def _brute_force_bound(model, x, y, eps):
    """log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) one image and one draw at a time, from
    torch.distributions and Python floats (no code shared with the model's bound)."""
    mu, logvar = model.encode(x, y)
    bounds = []
    for b in range(len(x)):
        q = Normal(mu[b], (0.5 * logvar[b]).exp())
        if y is None:
            p = Normal(torch.zeros(2), torch.ones(2))
        else:
            prior_mu, prior_logvar = model.class_prior.weight[y[b]].chunk(2)
            p = Normal(prior_mu, (0.5 * prior_logvar).exp())
        weights = []
        for k in range(eps.shape[0]):
            z = mu[b] + (0.5 * logvar[b]).exp() * eps[k, b]
            yb = None if y is None else y[b : b + 1]
            logits = model.decode(z[None], yb)[0]
            log_px = Bernoulli(logits=logits).log_prob(x[b]).sum()
            weights.append(float(log_px + p.log_prob(z).sum() - q.log_prob(z).sum()))
        top = max(weights)
        bounds.append(top + math.log(sum(math.exp(w - top) for w in weights) / len(weights)))
    return torch.tensor(bounds)


@pytest.mark.parametrize("which", ["vae", "cvae"])
def test_bound_equals_brute_force_log_mean_exp_of_the_same_draws(which):
    k = 5
    model = dict(zip(("vae", "cvae"), _models(k), strict=True))[which]
    x = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    y = torch.tensor([0, 2, 1]) if which == "cvae" else None
    torch.manual_seed(7)
    loss, terms = model.compute_terms(x, y)
    torch.manual_seed(7)  # the draws compute_terms made: eps [K, B, latent] after the encoder
    eps = torch.randn(k, 3, 2)
    with torch.no_grad():
        expected = _brute_force_bound(model, x, y, eps)
    torch.testing.assert_close(terms["iwae_bound"].detach(), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(loss.detach(), -expected.mean(), atol=1e-4, rtol=1e-5)


def test_k1_trains_on_the_elbo_bit_for_bit():
    torch.manual_seed(0)
    default = VAE(**TINY)
    explicit = VAE(**TINY, iwae_k_train=1)
    explicit.load_state_dict(default.state_dict())
    x = torch.rand(6, 1, 4, 4)
    results = []
    for model in (default, explicit):
        torch.manual_seed(3)
        results.append(model.compute_terms(x, None))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys() and "iwae_bound" not in results[1][1]
    for name, values in results[0][1].items():
        assert torch.equal(values, results[1][1][name])
    # beta = 1, reduction = sum: the loss is the negative ELBO.
    torch.testing.assert_close(results[1][0], -results[1][1]["elbo"].mean())


def test_bound_is_above_the_elbo_and_tightens_with_k():
    vae, _ = _models(1)
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    bounds, recon = {}, []
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        for k in (1, 5, 50):
            torch.manual_seed(0)
            draws = [vae.log_weights(x, None, mu, logvar, e) for e in torch.randn(400, k, 4, 2)]
            log_w = torch.stack([w for w, _ in draws])  # 400 repeats of K draws: [400, K, B]
            recon += [r["recon"] for _, r in draws]
            bound = torch.logsumexp(log_w, dim=1) - math.log(k)
            # Jensen, draw for draw: the log of the mean weight is >= the mean log weight.
            assert (bound >= log_w.mean(1) - 1e-4).all()
            bounds[k] = bound.mean(0)
        # The ELBO with its KL in closed form, its reconstruction averaged over every draw.
        elbo = -(torch.cat(recon).mean(0) + vae.kl_terms(mu, logvar, None))
    torch.testing.assert_close(bounds[1], elbo, atol=0.2, rtol=0)  # K = 1: the ELBO
    assert (bounds[5] > elbo + 0.05).all() and (bounds[50] > bounds[5]).all()


def test_gradients_reach_every_parameter():
    for model in _models(5):
        x = torch.rand(4, 1, 4, 4)
        y = torch.tensor([0, 1, 2, 0]) if isinstance(model, CVAE) else None
        loss, _ = model.compute_terms(x, y)
        loss.backward()
        for name, p in model.named_parameters():
            if name.startswith("class_prior") and y is None:
                continue
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_beta_other_than_one_is_refused(compose):
    with pytest.raises(GenlabError, match=r"iwae_k_train=5.*model\.beta=1.*reduction=sum"):
        validate_run_config(compose("model.iwae_k_train=5", "model.beta=0.5"))
    with pytest.raises(GenlabError, match=r"iwae_k_train=5.*reduction=mean"):
        validate_run_config(compose("model=cvae", "model.iwae_k_train=5", "model.reduction=mean"))
    with pytest.raises(GenlabError, match="beta=1"):
        VAE(**TINY, iwae_k_train=5, beta=2.0)
    with pytest.raises(GenlabError, match=r"model\.iwae_k_train=0.*integer >= 1"):
        validate_run_config(compose("model.iwae_k_train=0"))


def test_tiny_run_with_k5_logs_the_bound_above_the_elbo(compose, tmp_path):
    metrics = run(
        compose(
            "model.iwae_k_train=5",
            "model.mlp.hidden=[64]",
            "model.latent_dim=4",
            "model.iwae_k_val=0",
            "test=false",
            "save_images=false",
        )
    )
    for stage in ("train", "val"):
        bound, elbo = metrics[f"{stage}/iwae_bound"], metrics[f"{stage}/elbo"]
        assert math.isfinite(bound) and bound >= elbo, (stage, bound, elbo)
    assert metrics["val/loss"] == pytest.approx(-metrics["val/iwae_bound"], rel=1e-5)

"""The CVAE draws the class it is asked for: a learned prior p(z|y) per class, and the label
at every layer of both networks. Checked on data whose class is known by construction."""

import numpy as np
import pytest
import torch
from fixtures import TINY_DDPM, class_images
from torch.distributions import Normal, kl_divergence

from genlab.builders import build_model
from genlab.objectives import gaussian_kl, gaussian_kl_between
from genlab.training import run


def test_kl_between_gaussians_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar, pmu, plogvar = (torch.randn(5, 3, generator=g) for _ in range(4))
    expected = kl_divergence(
        Normal(mu, (0.5 * logvar).exp()), Normal(pmu, (0.5 * plogvar).exp())
    ).sum(1)
    assert torch.allclose(gaussian_kl_between(mu, logvar, pmu, plogvar), expected, atol=1e-5)
    zeros = torch.zeros_like(mu)
    assert torch.allclose(gaussian_kl_between(mu, logvar, zeros, zeros), gaussian_kl(mu, logvar))


def test_prior_starts_standard_and_labels_reach_every_layer(compose):
    model = build_model(
        compose(
            "model=cvae",
            "data=mnist",
            "model.arch=mlp",
            "model.latent_dim=16",
            "model.mlp.hidden=[64,32]",
        )
    )
    mu, logvar = model.prior(torch.arange(10))
    assert not mu.any() and not logvar.any()  # N(0, I) until trained
    linears = [
        m
        for m in [*model.encoder.modules(), *model.decoder.modules()]
        if isinstance(m, torch.nn.Linear)
    ]
    # Every linear layer reads the 10-d one-hot label beside its input.
    assert [m.in_features for m in linears] == [784 + 10, 64 + 10, 16 + 10, 32 + 10, 64 + 10]


def nearest_template(images: torch.Tensor) -> torch.Tensor:
    """The class of each image by correlation with the per-class templates of the test data."""
    templates = torch.from_numpy(np.random.default_rng(1234).random((10, 28, 28, 1)) > 0.6)
    t = templates[..., 0].float().flatten(1)
    t = (t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True)
    x = images.float().flatten(1)
    x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)
    return (x @ t.T).argmax(1)


def trained(compose, *overrides):
    """The model of a short training run (no test stage, no images) on the template data."""
    from genlab.models import MODEL_CLASSES
    from genlab.runs import load_run

    cfg = compose("data=mnist", "test=false", "save_images=false", *overrides)
    run(cfg)
    return load_run(cfg.paths.output_dir, MODEL_CLASSES).model


def requested_share(samples: torch.Tensor, wanted: torch.Tensor) -> float:
    """Share of samples whose nearest template is the class they were asked for."""
    return (nearest_template(samples[:, 0]) == wanted).float().mean().item()


def test_class_chosen_samples_are_of_that_class(compose):
    # The test data's class is its template (tests/fixtures.py); a 20-epoch CVAE on 320 images.
    images, labels = class_images(50, (28, 28, 1), 7)
    assert (nearest_template(torch.from_numpy(images[..., 0])) == torch.from_numpy(labels)).all()
    model = trained(
        compose, "model=cvae", "model.arch=mlp", "trainer.max_epochs=20", "model.latent_dim=8"
    )
    wanted = torch.arange(200) % 10
    samples = model.sample(200, wanted, generator=torch.Generator().manual_seed(0))
    hit = requested_share(samples, wanted)
    assert hit >= 0.8, hit  # 0.91 measured; 0.54 with an N(0, I) prior and the label at one layer
    plain = model.sample(200, wanted, generator=torch.Generator().manual_seed(0), guidance_scale=0)
    assert hit >= requested_share(plain, wanted)  # the default guidance (w = 1) does not hurt
    # The learned prior moved away from N(0, I) and differs between classes.
    mu, _ = model.prior(torch.arange(10))
    assert mu.std(0).mean() > 0.01


def test_guided_conditional_ddpm_draws_the_requested_class(compose):
    # The other label-chosen sampler: a class-conditional DDPM with classifier-free guidance
    # (issue 12), on the same template data, drawn with guidance w = 2.
    model = trained(
        compose,
        *TINY_DDPM,
        "model.conditional=true",
        "model.unet.base_channels=16",
        "model.optimizer.lr=2e-3",
        "model.warmup_steps=20",
        "model.ema_decay=null",
        "trainer.max_epochs=30",
    )
    wanted = torch.arange(100) % 10
    hits = {}
    for scale in (0.0, 2.0):
        generator = torch.Generator().manual_seed(0)
        samples = model.sample(100, wanted, generator=generator, guidance_scale=scale)
        hits[scale] = requested_share(samples, wanted)
    # Measured 0.80 guided, 0.43 unguided for these 300 steps on 320 images (the full-size
    # figure, 99.1% on Fashion-MNIST, is in docs/experiments.md); guidance must carry the label.
    assert hits[2.0] >= 0.7 and hits[2.0] >= hits[0.0] + 0.2, hits


def test_cvae_guidance_is_the_formula_and_needs_label_dropout():
    """Guided decoding: sigmoid((1 + w) l(z, y) - w l(z, null)) for the same z ~ p(z|y); the
    null label's one-hot code is all zeros; label dropout replaces about that share of the
    training labels (and none in evaluation); guidance without label dropout is refused."""
    from genlab.models import CVAE

    torch.manual_seed(0)
    model = CVAE(image_shape=[1, 28, 28], num_classes=10, arch="mlp", guidance_scale=2.0).eval()
    labels = torch.arange(6) % 10
    guided = model.sample(6, labels, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(6, model.latent_dim, generator=torch.Generator().manual_seed(3))
    z = model.latent_from_noise(eps, labels)
    with torch.no_grad():
        l_y, l_null = model.decode(z, labels), model.decode(z, torch.full_like(labels, 10))
    torch.testing.assert_close(guided, torch.sigmoid(3.0 * l_y - 2.0 * l_null))
    assert torch.equal(model.condition(torch.tensor([10])), torch.zeros(1, 10))

    seen = []
    model.decode = lambda z, y: (seen.append(y.clone()), torch.zeros(len(y), 1, 28, 28))[1]
    x, y = torch.rand(4000, 1, 28, 28), torch.randint(0, 10, (4000,))
    model.train()
    model.compute_terms(x, y)
    dropped = (seen[-1] == 10).float().mean().item()
    assert abs(dropped - 0.1) < 0.02, dropped
    model.eval()
    model.compute_terms(x, y)
    assert torch.equal(seen[-1], y)
    with pytest.raises(ValueError, match="model.label_dropout=0"):
        CVAE(image_shape=[1, 28, 28], num_classes=10, label_dropout=0.0, guidance_scale=1.0)

"""Evaluation numbers: the IWAE NLL estimator against a model with a known likelihood, FID
behaviour, the domain classifier, and the metrics landing in a real run."""

import json
import math

import pytest
import torch
from torch import nn
from torchmetrics.image import FrechetInceptionDistance

from genlab import GenlabError
from genlab.metrics.classifier import (
    DomainClassifier,
    FeatureView,
    cache_path,
    load_classifier,
    train_classifier,
)
from genlab.metrics.likelihood import iwae_log_likelihood
from genlab.metrics.quality import SampleQuality
from genlab.training import run


class LinearGaussian(nn.Module):
    """z ~ N(0, 1), x | z ~ N(b + w z, s^2 I) on 2 "pixels": log p(x) is known in closed form.
    The encoder is deliberately off (shifted mean, too wide), so K matters."""

    likelihood = "gaussian"

    def __init__(self):
        super().__init__()
        self.w, self.b, self.s = torch.tensor([0.05, -0.03]), torch.tensor([0.5, 0.4]), 0.02
        self.log_sigma = torch.tensor([math.log(self.s)])

    def true_posterior(self, x):
        precision = 1 + (self.w**2).sum() / self.s**2
        mean = ((x.view(-1, 2) - self.b) * self.w).sum(1) / self.s**2 / precision
        return mean, 1 / precision

    def encode(self, x, y=None):
        mean, var = self.true_posterior(x)
        return (mean + 0.5 * var.sqrt()).unsqueeze(1), torch.full_like(
            mean, math.log(3 * var)
        ).unsqueeze(1)

    def decode(self, z, y=None):
        m = self.b + z * self.w  # [N, 2] in (0, 1) for any plausible z
        return torch.logit(m).view(-1, 1, 1, 2)  # the likelihood applies the sigmoid

    def log_px(self, x):
        cov = torch.outer(self.w, self.w) + self.s**2 * torch.eye(2)
        dist = torch.distributions.MultivariateNormal(self.b, cov)
        return dist.log_prob(x.view(-1, 2))


def test_iwae_recovers_a_known_likelihood():
    torch.manual_seed(0)
    model = LinearGaussian()
    z = torch.randn(64, 1)
    x = (model.b + z * model.w + model.s * torch.randn(64, 2)).view(64, 1, 1, 2)
    truth = model.log_px(x)
    elbo_like = iwae_log_likelihood(model, x, k=1)
    estimate = iwae_log_likelihood(model, x, k=2000)
    assert (truth - estimate).abs().mean() < 0.02  # within 0.02 nats per image
    assert (truth - elbo_like).mean() > 0.1  # K=1 (the ELBO) is visibly looser
    assert estimate.mean() <= truth.mean() + 0.005  # a lower bound in expectation
    assert (estimate <= truth + 0.05).all()  # and per image, up to Monte-Carlo noise


def test_iwae_bound_tightens_with_k_on_a_trained_vae(compose, tmp_path):
    from genlab.models import VAE

    run(
        compose(
            "model.mlp.hidden=[64]",
            "model.latent_dim=4",
            "trainer.max_epochs=3",
            "test=false",
            "save_images=false",
            "model.iwae_k_val=0",
        )
    )
    model = VAE.load_from_checkpoint(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    from genlab.data import ImageDataModule

    dm = ImageDataModule.from_name(
        "fashion_mnist", compose().paths.data_dir, download=False, system_dirs=[]
    )
    dm.setup("test")
    x = dm.splits["test"][0][:48].float() / 255
    torch.manual_seed(0)
    _, terms = model.compute_terms(x, None)
    bounds = {k: float(iwae_log_likelihood(model, x, k=k).mean()) for k in (1, 10, 200)}
    assert bounds[1] == pytest.approx(float(terms["elbo"].mean()), abs=2.0)  # K=1 is the ELBO
    assert bounds[1] < bounds[10] < bounds[200]


def test_fid_is_zero_on_itself_and_grows_with_noise():
    torch.manual_seed(0)
    features = FeatureView(DomainClassifier([1, 28, 28]))
    images = torch.rand(200, 1, 28, 28)

    def fid(fake):
        metric = FrechetInceptionDistance(feature=features, normalize=True)
        metric.update(images, real=True)
        metric.update(fake.clamp(0, 1), real=False)
        return float(metric.compute())

    same = fid(images)
    small, large = (
        fid(images + 0.05 * torch.randn_like(images)),
        fid(images + 0.3 * torch.randn_like(images)),
    )
    assert abs(same) < 1e-3
    assert same < small < large


def test_domain_classifier_learns_and_is_checked(data_root, tmp_path):
    from genlab.data import ImageDataModule

    dm = ImageDataModule.from_name("mnist", data_root, download=False, system_dirs=[])
    path, accuracy = train_classifier(
        "mnist", data_root, epochs=10, out=tmp_path / "c.pt", datamodule=dm
    )
    assert accuracy > 0.9
    model, stored = load_classifier(path, "mnist", [1, 28, 28])
    assert stored == accuracy and isinstance(model, DomainClassifier)
    with pytest.raises(GenlabError, match="classifier for mnist.*not cifar10"):
        load_classifier(path, "cifar10", [3, 32, 32])


def test_run_reports_nll_and_domain_fid(compose, data_root, tmp_path, caplog):
    from genlab.data import ImageDataModule

    dm = ImageDataModule.from_name("mnist", data_root, download=False, system_dirs=[])
    train_classifier("mnist", data_root, epochs=3, datamodule=dm)
    try:
        metrics = run(
            compose(
                "data=mnist", "model.mlp.hidden=[64]", "model.latent_dim=4", "model.iwae_k_test=50"
            )
        )
    finally:
        cache_path(data_root, "mnist").unlink()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in (
        "test/nll",
        "test/bpd",
        "test/fid_domain",
        "test/kid_domain",
        "test/is_domain",
        "test/domain_classifier_acc",
        "test/quality_samples_domain",
    ):
        assert key in saved, key
    assert saved["test/quality_samples_domain"] == 64
    # The NLL estimate is at least as tight as the ELBO, and bits/dim is nats / (D ln 2).
    assert metrics["test/nll"] <= -metrics["test/elbo"] + 0.5
    assert metrics["test/bpd"] == pytest.approx(metrics["test/nll"] / (784 * math.log(2)), rel=1e-4)
    assert (
        "Inception) skipped: no weights" in caplog.text and "eval.inception_weights" in caplog.text
    )


def test_bad_inception_weights_warn_instead_of_crashing(tmp_path, caplog):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a weights file")
    quality = SampleQuality(
        dataset="mnist",
        data_dir=tmp_path,
        num_samples=10,
        domain=False,
        inception_weights=str(bad),
        kid_subset_size=5,
    )
    assert quality._spaces((1, 28, 28), torch.device("cpu")) == {}
    assert "cannot be used" in caplog.text and "eval.inception_weights" in caplog.text


def test_fewer_samples_than_kid_subset_is_refused(tmp_path):
    with pytest.raises(GenlabError, match="smaller than KID's subset size"):
        SampleQuality(dataset="mnist", data_dir=tmp_path, num_samples=100, kid_subset_size=1000)


def test_domain_features_see_images_as_they_are(monkeypatch, data_root, tmp_path):
    """FID, KID and IS hand the domain classifier float images in [0, 1] (torchmetrics' IS
    would turn normalised inputs into bytes 0..255), and IS matches its formula."""
    from genlab.data import ImageDataModule
    from genlab.metrics import classifier as clf_module

    dm = ImageDataModule.from_name("mnist", data_root, download=False, system_dirs=[])
    path, _ = train_classifier("mnist", data_root, epochs=2, out=tmp_path / "c.pt", datamodule=dm)
    monkeypatch.setattr(clf_module, "cache_path", lambda data_dir, dataset: path)
    seen = []
    original = clf_module.DomainClassifier.features

    def spy(self, x):
        seen.append((x.dtype, float(x.min()), float(x.max())))
        return original(self, x)

    monkeypatch.setattr(clf_module.DomainClassifier, "features", spy)
    dm.setup("test")
    images = dm.splits["test"][0].float() / 255

    class Generator:  # a "model" whose samples are the real test images
        device = torch.device("cpu")

        def preview_labels(self, n):
            return None

        def sample(self, n, labels=None, generator=None):
            return images[:n]

    class Trainer:
        datamodule, global_rank, world_size = dm, 0, 1

    logged = {}
    Generator.log = lambda self, key, value, **kw: logged.__setitem__(key, float(value))
    quality = SampleQuality(
        dataset="mnist",
        data_dir=tmp_path,
        num_samples=len(images),
        kid_subset_size=16,
        batch_size=32,
    )
    quality.on_test_epoch_end(Trainer(), Generator())
    assert seen and all(d.is_floating_point and lo >= 0 and hi <= 1 for d, lo, hi in seen)
    # Samples equal to the real images: FID ~ 0; IS = exp(E KL(p(y|x) || p(y))) <= classes.
    assert abs(logged["test/fid_domain"]) < 0.5  # not exactly 0: 96 images, 128-d features
    model, _ = load_classifier(path, "mnist", [1, 28, 28])
    with torch.no_grad():
        p = model(images).softmax(1)
    one_split = math.exp(float((p * (p.log() - p.mean(0).log())).sum(1).mean()))
    assert 1 <= logged["test/is_domain"] <= 10
    assert logged["test/is_domain"] == pytest.approx(one_split, rel=0.35)

"""Every model x data pair builds from the real configs and learns; architecture facts."""

import pytest
import torch
from torch import nn

from genlab.builders import build_datamodule, build_model
from genlab.models import AE, CVAE, VAE

SMALL_CONV = ["model.conv.channels=[8,16]", "model.conv.fc_dim=32"]


def test_seed_autoencoder_architecture(compose):
    model = build_model(compose("model=ae", "data=mnist"))

    def shapes(module):
        return [
            (m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)
        ]

    assert shapes(model.encoder) == [(784, 128), (128, 64), (64, 36), (36, 18)]
    assert shapes(model.head) == [(18, 9)]
    assert shapes(model.decoder) == [(9, 18), (18, 36), (36, 64), (64, 128), (128, 784)]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 8
    images = model.decode_images(torch.randn(3, 9))
    assert images.shape == (3, 1, 28, 28) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("data", ["mnist", "fashion_mnist", "cifar10"])
@pytest.mark.parametrize("model_name", ["ae", "vae", "cvae"])
def test_every_model_and_data_learns(compose, model_name, data):
    cfg = compose(
        f"model={model_name}", f"data={data}", "model.latent_dim=4", "model.optimizer.lr=3e-3"
    )
    torch.manual_seed(0)
    model, dm = build_model(cfg), build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    images, labels = dm.splits["train"]
    assert list(model.image_shape) == list(images.shape[1:])  # shape flowed from the data config
    x, y = images[:64].float() / 255, labels[:64]
    optimizer = model.configure_optimizers()

    def loss_now():
        torch.manual_seed(1)  # same reparameterisation noise for the before/after comparison
        with torch.no_grad():
            return float(model.compute_terms(x, y)[0])

    before = loss_now()
    for _ in range(60):
        loss, _ = model.compute_terms(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_now() < 0.95 * before


def test_cifar_defaults_to_conv_and_learned_gaussian(compose):
    model = build_model(compose("data=cifar10"))
    assert any(isinstance(m, nn.Conv2d) for m in model.modules())
    assert isinstance(model.log_sigma, nn.Parameter) and model.log_sigma.shape == (3,)
    mnist = build_model(compose("data=mnist"))
    assert not any(isinstance(m, nn.Conv2d) for m in mnist.modules())
    assert "log_sigma" not in dict(mnist.named_parameters())


@pytest.mark.parametrize("encoding", ["onehot", "embedding"])
def test_cvae_samples_the_chosen_class(encoding):
    torch.manual_seed(0)
    model = CVAE(image_shape=[1, 28, 28], latent_dim=2, label_encoding=encoding)
    g = lambda: torch.Generator().manual_seed(0)
    zeros = model.sample(4, torch.zeros(4, dtype=torch.long), generator=g())
    sevens = model.sample(4, torch.full((4,), 7), generator=g())
    assert zeros.shape == (4, 1, 28, 28)
    assert not torch.allclose(zeros, sevens)  # same z, different label: different images
    torch.testing.assert_close(
        zeros, model.sample(4, torch.zeros(4, dtype=torch.long), generator=g())
    )
    with pytest.raises(ValueError, match="needs labels"):
        model.sample(4)


def test_models_refuse_images_of_another_shape():
    from genlab import GenlabError

    model = VAE(image_shape=[1, 28, 28], latent_dim=2)
    with pytest.raises(GenlabError, match=r"built for images of shape \[1, 28, 28\]"):
        model.training_step((torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)), 0)


def test_ae_is_deterministic_and_vae_is_not():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    ae = AE(image_shape=[1, 28, 28], latent_dim=3)
    assert torch.equal(ae.compute_terms(x, None)[0], ae.compute_terms(x, None)[0])
    vae = VAE(image_shape=[1, 28, 28], latent_dim=3)
    assert not torch.equal(vae.compute_terms(x, None)[0], vae.compute_terms(x, None)[0])

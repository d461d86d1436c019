"""genlab.specs is the one place of a model's defaults: Hydra composes from it, the constructor
checks against it, the checkpoint stores it and loading rebuilds from it."""

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from genlab import GenlabError
from genlab.models import MODEL_CLASSES, VAE
from genlab.models.catalog import MODEL_SPECS
from genlab.specs import UNET_DDPM_CIFAR10, build_spec

# Keys conf/model/ and conf/_model_latent_.yaml take from other groups instead of the spec.
WIRED = {"image_shape", "num_classes", "arch", "likelihood", "iwae_k_test", "test_bpd_images"}


@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
def test_composed_model_config_is_the_spec(compose, name):
    model = OmegaConf.to_container(compose(f"model={name}").model, resolve=False)
    spec = dataclasses.asdict(MODEL_SPECS[name]())
    assert set(model) == set(spec)
    # Keys wired to other groups are interpolations (they cannot drift from the data and eval
    # configs); every other key is the spec's default, so YAML holds no second default.
    wired = {k for k, v in model.items() if str(v).startswith("${")}
    assert wired <= WIRED
    assert {k: v for k, v in model.items() if k not in wired} == {
        k: v for k, v in spec.items() if k not in wired
    }


def test_model_class_and_spec_registries_agree():
    assert set(MODEL_CLASSES) == set(MODEL_SPECS)
    for name, cls in MODEL_CLASSES.items():
        assert cls.spec_class is MODEL_SPECS[name]
        assert MODEL_SPECS[name]._target_ == f"genlab.models.{cls.__name__}"


def test_paper_experiment_uses_the_paper_unet(compose):
    unet = OmegaConf.to_container(compose("experiment=ddpm_cifar10").model.unet)
    assert unet == dataclasses.asdict(UNET_DDPM_CIFAR10)


def test_ddpm_clipping_has_one_key(compose):
    assert compose("model=ddpm").trainer.gradient_clip_val == 1.0
    assert compose("model=vae").trainer.gradient_clip_val is None
    assert compose("model=ddpm", "trainer.gradient_clip_val=null").trainer.gradient_clip_val is None
    assert "grad_clip" not in compose("model=ddpm").model


def test_checkpoint_hparams_rebuild_the_same_model():
    torch.manual_seed(0)
    model = VAE(image_shape=[1, 28, 28], latent_dim=3, mlp={"hidden": [32]}, beta=0.5)
    hparams = dict(model.hparams)
    assert hparams == model.spec.hparams()
    rebuilt = VAE.from_hparams({**hparams, "grad_clip": 1.0})  # a key an older genlab stored
    assert rebuilt.spec == model.spec
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(rebuilt.encode_mean(x), model.encode_mean(x))


def test_constructor_refuses_unknown_keys_and_bad_values():
    with pytest.raises(GenlabError, match="no key 'betta'.*beta"):
        VAE(image_shape=[1, 28, 28], betta=1.0)
    with pytest.raises(GenlabError, match=r"model\.mlp\.hidden=\[0\].*positive integers"):
        VAE(image_shape=[1, 28, 28], mlp={"hidden": [0]})
    with pytest.raises(GenlabError, match=r"model\.optimizer\.lr=-1.*> 0"):
        build_spec(MODEL_SPECS["ddpm"], {"optimizer": {"lr": -1}})


def test_cosine_schedule_ends_the_run_at_zero_learning_rate():
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.rand(64, 1, 28, 28), torch.zeros(64, dtype=torch.long))
    model = VAE(image_shape=[1, 28, 28], latent_dim=2, mlp={"hidden": [16]})
    # conf/scheduler/warmup_cosine.yaml with warmup_steps=0: the plain cosine decay.
    model.scheduler_cfg = {
        "_target_": "genlab.schedules.warmup_cosine",
        "_partial_": True,
        "warmup_steps": 0,
    }
    trainer = pl.Trainer(
        max_steps=12,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=8))
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(GenlabError, match="lr_schedule"):  # a retired key (scheduler= now)
        VAE(image_shape=[1, 28, 28], lr_schedule="cosine")


def test_validate_refuses_a_model_key_the_spec_lacks(compose):
    from genlab.run_rules import validate_run_config

    with pytest.raises(GenlabError, match=r"model\.betta is not a key of model=vae.*beta"):
        validate_run_config(compose("+model.betta=1"))

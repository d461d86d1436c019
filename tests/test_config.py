"""Bad input fails before training, with one message naming the key and what is accepted."""

import pytest

from genlab import GenlabError
from genlab.run_rules import validate_run_config
from genlab.training import run

BAD = [
    ("model.beta=-1", r"model\.beta=-1.*a number >= 0"),
    ("model.beta=abc", r"model\.beta='abc' \(str\).*a number >= 0"),
    ("model.latent_dim=0", r"model\.latent_dim=0.*an integer >= 1"),
    ("model.latent_dim=2.5", r"model\.latent_dim=2\.5.*an integer >= 1"),
    ("data.batch_size=0", r"data\.batch_size=0.*an integer >= 1"),
    ("model.optimizer.lr=-1", r"model\.optimizer\.lr=-1.*a number > 0"),
    ("trainer.precision=17", r"trainer\.precision=17.*one of 32, 32-true, 16-mixed, bf16-mixed"),
    ("model.likelihood=poisson", r"model\.likelihood='poisson'.*bernoulli, gaussian"),
    ("model.reduction=median", r"model\.reduction='median'.*sum.*mean"),
    ("model.arch=resnet", r"model\.arch='resnet'.*mlp, conv"),
    ("data.val_fraction=1.5", r"data\.val_fraction=1\.5.*\[0, 1\)"),
    ("seed=-3", r"seed=-3.*an integer in \[0, 2\*\*32\)"),
    (
        "model.image_shape=[3,32,32]",
        r"model\.image_shape=\[3, 32, 32\] does not fit.*\[1, 28, 28\]",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_named(compose, override, message):
    cfg = compose(override)
    with pytest.raises(GenlabError, match=message):
        validate_run_config(cfg)


def test_run_fails_before_touching_the_run_dir(compose, tmp_path):
    with pytest.raises(GenlabError):
        run(compose("model.latent_dim=0"))
    assert not (tmp_path / "run").exists()


def test_missing_data_fails_before_training(compose, tmp_path):
    cfg = compose(f"paths.data_dir={tmp_path / 'empty'}", "data=mnist")
    with pytest.raises(GenlabError, match="Dataset 'mnist' not found.*data=fashion_mnist"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_defaults_are_valid(compose):
    for overrides in (["model=ae"], ["model=vae"], ["model=cvae", "data=cifar10"]):
        validate_run_config(compose(*overrides))


@pytest.mark.parametrize(
    "target", ["torch.optim.RMSprop", "torch.optim.SGD", "torch.optim.Adagrad", "torch.optim.AdamW"]
)
def test_every_torch_optimizer_passes_with_the_default_fused(compose, target):
    """model.optimizer.fused (genlab's key, default null) is not an argument the optimizer
    class must take: RMSprop, which has no fused kernel, validates with it left as it is."""
    validate_run_config(compose(f"model.optimizer._target_={target}"))


@pytest.mark.parametrize(
    ("experiment", "model", "data", "beta"),
    [
        ("seed_ae_mnist", "ae", "mnist", None),
        ("seed_vae_mnist", "vae", "mnist", 0.025),
        ("seed_vae_cifar10", "vae", "cifar10", 1e-4),
    ],
)
def test_seed_presets_compose(compose, experiment, model, data, beta):
    cfg = compose(f"experiment={experiment}")
    validate_run_config(cfg)
    assert (cfg.model.name, cfg.data.name, cfg.model.reduction) == (model, data, "mean")
    assert cfg.model.get("beta") == beta
    assert list(cfg.model.image_shape) == list(cfg.data.image_shape)


def test_run_dirs_cannot_collide(tmp_path):
    """Two runs started in the same second (parallel jobs) get different dirs: the name holds
    microseconds and the process id."""
    import os
    import re

    from fixtures import CONF_DIR
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    import genlab.resolvers  # noqa: F401

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"paths.output_root={tmp_path}"], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    name = run_dir.rsplit("/", 1)[-1]
    assert re.fullmatch(rf"\d\d-\d\d-\d\d-\d{{6}}_{os.getpid()}_vae-fashion_mnist", name), name
    assert run_dir.startswith(f"{tmp_path}/runs/")

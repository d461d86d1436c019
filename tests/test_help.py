"""What `python train.py --help` and Hydra's tab completion offer as choices of a config group.

Both read a group's options from its folder in conf/, so a file there that is only included by
other configs (the keys every dataset or latent model shares) would be offered as a choice that
crashes. Those shared files live in conf/ itself, outside any group; these tests pin that down.
"""

import re
import subprocess
import sys

import pytest
from fixtures import CONF_DIR, REPO
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.bash_completion import BashCompletion
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException

CHOICES = {
    "model": ["ae", "cvae", "ddpm", "latent_ddpm", "vae", "vqvae"],
    "data": ["cifar10", "fashion_mnist", "image_folder", "mnist"],
    "scheduler": ["constant", "onecycle", "warmup_constant", "warmup_cosine"],
    "debug": ["fast", "limit", "overfit"],
    "callbacks": ["default", "early_stopping"],
}


@pytest.fixture
def hydra_conf():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def _help_groups(text: str) -> dict[str, list[str]]:
    """The `group: a, b, c` lines of the help's "Configuration groups" section."""
    section = text.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    lines = re.findall(r"^([\w/]+): (.+)$", section, flags=re.MULTILINE)
    return {group: options.split(", ") for group, options in lines}


def test_help_lists_only_real_choices():
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    groups = _help_groups(result.stdout)
    for group, choices in CHOICES.items():
        assert groups[group] == choices
    # No group anywhere offers an internal (underscore) config.
    assert not [(g, o) for g, options in groups.items() for o in options if o.startswith("_")]


@pytest.mark.parametrize("group", sorted(CHOICES))
def test_completion_offers_only_real_choices(hydra_conf, group, monkeypatch, capsys):
    # The same call as `python train.py -sc query=bash` makes when the shell completes `group=`.
    monkeypatch.setenv("COMP_LINE", f"python train.py {group}=")
    BashCompletion(hydra_conf).query(config_name="train")
    assert capsys.readouterr().out.split() == [f"{group}={c}" for c in CHOICES[group]]


@pytest.mark.parametrize(
    "override", ["data=_base_", "model=_latent_", "data=_data_base_", "model=_model_latent_"]
)
def test_internal_configs_are_refused_with_the_real_choices(hydra_conf, override):
    group = override.split("=")[0]
    with pytest.raises(MissingConfigException) as error:
        compose(config_name="train", overrides=[override])
    # The message lists the options one a line, then Hydra's config search path.
    options = str(error.value).split(f"Available options in '{group}':", 1)[1]
    listed = options.split("Config search path:", 1)[0].split()
    assert listed == CHOICES[group]


def test_real_choices_still_carry_the_shared_keys(hydra_conf):
    # The shared files are included from outside the group (`- /_data_base_@_here_`): their keys
    # must still land under `data` and `model`, not at the top level.
    cfg = compose(config_name="train", overrides=["model=ae", "data=mnist"])
    assert cfg.data.batch_size == 128 and cfg.data.name == "mnist"
    assert cfg.model.reduction == "sum" and cfg.model.latent_dim == 9
    assert "batch_size" not in cfg and "reduction" not in cfg

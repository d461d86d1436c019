"""Refusals come from the model's capabilities and the specs: for every built-in model and every
task it cannot do, `python sample.py` exits 2 with a message that names the task, lists only
tasks the model really does, and suggests only `model.<key>=` settings the named model's spec
accepts (so a hint such as "retrain a VQ-VAE with model.latent_dim=2" cannot come back). The
Python API's refusals of the same things (sample, encode, reconstruct) say the same."""

import dataclasses
import re
import runpy
import sys
from pathlib import Path

import pytest
from fixtures import REPO, compose_run

import genlab
from genlab import GenlabError
from genlab.models import MODEL_CLASSES
from genlab.models.catalog import MODEL_SPECS
from genlab.runs import load_run
from genlab.sample import TASKS, tasks_for

RUN = ["data=mnist", "test=false", "save_images=false", "eval.sample_quality=false"]
MODELS = {
    "ae": ["model=ae", "model.mlp.hidden=[32]"],
    "vae": ["model=vae", "model.mlp.hidden=[32]"],
    "cvae": ["model=cvae", "model.arch=mlp", "model.mlp.hidden=[32]"],
    "ddpm": [
        "model=ddpm",
        "model.timesteps=30",
        "model.sample_steps=4",
        "model.unet.base_channels=8",
        "model.unet.channel_mults=[1,2]",
    ],
    "vqvae": ["model=vqvae", "model.channels=[8,8]", "model.code_dim=4", "model.num_codes=16"],
}


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """One tiny trained run (1 epoch) per built-in model; the latent DDPM on the AE run."""
    from genlab.training import run as train

    root = tmp_path_factory.mktemp("refusal_runs")
    out = {}
    for kind, overrides in MODELS.items():
        train(compose_run(data_root, root / kind, *overrides, *RUN))
        out[kind] = root / kind
    prior = ["model=latent_ddpm", "model.timesteps=30", "model.sample_steps=4"]
    prior += ["model.mlp.hidden=[32]", f"model.autoencoder={out['ae']}"]
    train(compose_run(data_root, root / "latent_ddpm", *prior, *RUN))
    out["latent_ddpm"] = root / "latent_ddpm"
    return out


def _keys(kind: str) -> set[str]:
    return {f.name for f in dataclasses.fields(MODEL_SPECS[kind])}


def check_message(message: str, kind: str, task: str | None, supported: list[str]) -> None:
    """The refusal names the task (where it refuses one); every other task it names is one this
    model does; every `model.<key>=` it suggests is a key of the model named just before it (or
    of this one)."""
    if task is not None:
        assert f"task={task}" in message, message
        assert task not in supported
    named = set(re.findall(r"task=([a-z_]+)", message)) - {task}
    listed = re.search(r"can do: task=([a-z_, ]+)", message)
    if listed:
        named |= {t.strip() for t in listed.group(1).split(",")}
    assert named <= set(supported), (named - set(supported), message)
    current = kind
    for model, key in re.findall(r"model=([a-z_]+)|model\.([a-z_]+)=", message):
        if model:
            assert model in MODEL_SPECS, message
            current = model
        else:
            assert key in _keys(current), f"model={current} has no key {key}: {message}"


def _supported(run_dir) -> list[str]:
    return tasks_for(load_run(str(run_dir), MODEL_CLASSES, "cpu").model)


def _cli(capsys, monkeypatch, *args) -> tuple[int, str]:
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", [str(REPO / "sample.py"), *args])
    monkeypatch.chdir(REPO)
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(REPO / "sample.py"), run_name="__main__")
    finally:
        GlobalHydra.instance().clear()
    return exit_info.value.code, capsys.readouterr().err


def test_every_refusal_names_the_task_what_the_model_can_do_and_real_keys(
    runs, tmp_path, capsys, monkeypatch
):
    refused = 0
    for kind, run_dir in runs.items():
        supported = _supported(run_dir)
        assert supported == [t for t in TASKS if t in supported]  # a subset of TASKS, in order
        for task in TASKS:
            if task in supported:
                continue
            refused += 1
            args = [f"run={run_dir}", f"task={task}", "device=cpu", f"out_dir={tmp_path / task}"]
            code, err = _cli(capsys, monkeypatch, *args)
            assert code == 2, err
            assert "Traceback" not in err
            check_message(err, kind, task, supported)
            assert f"can do: task={', '.join(supported)}." in err, err
            assert "<this run>" not in err  # sample.py names the run itself
            assert not (tmp_path / task).exists()  # nothing written
    assert refused >= 20  # every model refuses something; the diffusion models most


def test_autoencoders_without_a_prior_point_at_a_latent_ddpm_of_their_own_run(
    runs, tmp_path, capsys, monkeypatch
):
    for kind in ("ae", "vqvae"):
        _, err = _cli(capsys, monkeypatch, f"run={runs[kind]}", "task=samples", "device=cpu")
        assert f"model=latent_ddpm model.autoencoder={runs[kind]}" in err, err


def test_the_vqvae_is_not_told_to_retrain_with_a_key_it_lacks(runs, capsys, monkeypatch):
    _, err = _cli(capsys, monkeypatch, f"run={runs['vqvae']}", "task=manifold", "device=cpu")
    assert "model=vqvae model.latent_dim" not in err
    assert "model=vae model.latent_dim=2" in err
    # the latent DDPM is not told its x_T has the image's shape, nor to retrain as a pixel DDPM
    _, err = _cli(capsys, monkeypatch, f"run={runs['latent_ddpm']}", "task=classes", "device=cpu")
    assert "model=latent_ddpm model.conditional=true" in err and "model=ddpm" not in err
    _, err = _cli(capsys, monkeypatch, f"run={runs['latent_ddpm']}", "task=traverse", "device=cpu")
    assert "image's own shape" not in err


def test_an_unconditional_model_refuses_label_with_its_own_way_to_condition(
    runs, capsys, monkeypatch
):
    for kind in ("vae", "ddpm"):
        args = [f"run={runs[kind]}", "task=samples", "label=1", "device=cpu"]
        code, err = _cli(capsys, monkeypatch, *args)
        assert code == 2 and "label=1" in err
        check_message(err, kind, None, _supported(runs[kind]))


@pytest.mark.parametrize("kind", ["ae", "vqvae"])
def test_the_api_refuses_sampling_an_autoencoder_with_the_same_ways(runs, kind):
    with pytest.raises(GenlabError) as err:
        genlab.load(runs[kind]).sample(2)
    message = str(err.value)
    assert "model=latent_ddpm model.autoencoder=" in message and "model=vae" in message
    # The run it was loaded from, as sample.py names it, not a placeholder.
    assert "<this run>" not in message and Path(runs[kind]).name in message
    check_message(message, kind, None, _supported(runs[kind]))


def test_the_api_refuses_a_label_for_an_unconditional_model_with_the_way_to_condition(runs):
    for kind, way in (("vae", "model=cvae"), ("ddpm", "model.conditional=true")):
        with pytest.raises(GenlabError) as err:
            genlab.load(runs[kind]).sample(2, labels=1)
        message = str(err.value)
        assert "labels=" in message and way in message
        check_message(message, kind, None, _supported(runs[kind]))


@pytest.mark.parametrize("kind", ["ddpm", "latent_ddpm"])
def test_the_api_refuses_encoding_with_a_diffusion_model_and_says_where_to_go(runs, kind):
    import torch

    pipe = genlab.load(runs[kind])
    for call in (pipe.encode, pipe.reconstruct):
        with pytest.raises(GenlabError) as err:
            call(torch.zeros(1, 1, 28, 28))
        message = str(err.value)
        assert "no encoder" in message
        check_message(message, kind, None, _supported(runs[kind]))
        if kind == "latent_ddpm":
            assert "autoencoder" in message
        else:
            assert "model=vae" in message

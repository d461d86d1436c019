"""The Python API (docs/python-api.md) and portable exports: genlab.train runs what train.py
runs and raises its messages; genlab.load gives a Pipeline whose methods follow the model's
capabilities; an export (model.safetensors + config.json + README.md) loads without pickle into
bit-identical samples, records the spec and metrics, and refuses a missing or altered file."""

import json
import logging
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch
from fixtures import FAST, REPO, TINY_DDPM

import genlab
from genlab import GenlabError
from genlab.api import override_list
from genlab.export import CARD, CONFIG, WEIGHTS, export_run
from genlab.pipeline import DataInfo, Pipeline

DOC = REPO / "docs" / "python-api.md"
QUIET = [*FAST, "test=false", "save_images=false"]


def _train(data_root, out_root, *overrides):
    return genlab.train(
        [f"paths.data_dir={data_root}", f"paths.output_root={out_root}", *QUIET, *overrides]
    )


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """A tiny VAE, CVAE and (EMA) DDPM, each trained for one epoch through genlab.train."""
    root = tmp_path_factory.mktemp("api_runs")
    mlp = ["model.mlp.hidden=[64]", "model.latent_dim=2"]
    logger = logging.getLogger()
    before = (list(logger.handlers), logger.level)
    vae = _train(data_root, root, "model=vae", *mlp)
    LOGGING_AFTER_A_RUN.append(before == (list(logger.handlers), logger.level))
    return {
        "vae": vae,
        "cvae": _train(data_root, root, "model=cvae", "model.arch=mlp", *mlp),
        "ddpm": _train(data_root, root, *TINY_DDPM, "model.ema_decay=0.9", "data=mnist"),
    }


LOGGING_AFTER_A_RUN: list[bool] = []  # whether the root logger was as before (the fixture's run)


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {kind: export_run(run.run_dir, root / kind) for kind, run in runs.items()}


# -- genlab.train ----------------------------------------------------------------------------------
def test_import_is_cheap_and_the_api_is_reached_lazily():
    code = (
        "import sys, genlab\n"
        "assert callable(genlab.load) and callable(genlab.train)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_train_makes_the_run_train_py_makes(runs):
    run = runs["vae"]
    assert run.metrics == json.loads((run.run_dir / "metrics.json").read_text())
    for name in ("config.yaml", "train.log", ".hydra/overrides.yaml", "checkpoints"):
        assert (run.run_dir / name).exists(), name
    assert "model.latent_dim=2" in (run.run_dir / ".hydra/overrides.yaml").read_text()
    assert re.fullmatch(r"[\d-]+_\d+_vae-fashion_mnist", run.run_dir.name)  # Hydra's run dir


def test_train_leaves_the_callers_logging_as_it_was(runs):
    assert LOGGING_AFTER_A_RUN == [True]  # Hydra's console and train.log handlers are gone
    assert "final metrics" in (runs["vae"].run_dir / "train.log").read_text()


def test_an_error_inside_the_run_is_raised(tmp_path):
    empty = tmp_path / "no-data"
    with pytest.raises(GenlabError, match="FashionMNIST") as err:
        genlab.train([f"paths.data_dir={empty}", f"paths.output_root={tmp_path}", *QUIET])
    assert str(empty) in str(err.value)


@pytest.mark.parametrize(
    "override",
    ["model.latent_dim=0", "model.latnet_dim=3", "model=vea", "trainer.max_epochs=[1"],
)
def test_bad_input_raises_the_message_train_py_prints(data_root, tmp_path, override):
    from genlab.cli import precheck

    args = [f"paths.data_dir={data_root}", f"paths.output_root={tmp_path}", *QUIET, override]
    with pytest.raises(GenlabError) as printed:  # what `python train.py` prints, exit 2
        precheck(args, "train")
    with pytest.raises(GenlabError) as raised:
        genlab.train(args)
    assert str(raised.value) == str(printed.value)
    assert not any(tmp_path.iterdir())  # nothing written


def test_dict_overrides_are_the_command_lines():
    given = {
        "model": "vae",
        "model.mlp.hidden": [64, 32],
        "seed": None,
        "test": False,
        "model.beta": 0.5,
        "ckpt_path": "runs/x/epoch=004-step=10.ckpt",
    }
    assert override_list(given) == [
        "model=vae",
        "model.mlp.hidden=[64,32]",
        "seed=null",
        "test=false",
        "model.beta=0.5",
        "ckpt_path='runs/x/epoch=004-step=10.ckpt'",
    ]
    with pytest.raises(GenlabError, match="-m"):
        genlab.train(["-m", "model.beta=1,2"])
    # A multirun asked for by override is refused too, naming it, before Hydra starts.
    with pytest.raises(GenlabError, match=r"not hydra\.mode=MULTIRUN: run a sweep"):
        genlab.train(["hydra.mode=MULTIRUN", "model.beta=1,2"])


# -- genlab.load and the Pipeline ------------------------------------------------------------------
def test_pipeline_methods_and_data(runs):
    pipe = genlab.load(runs["vae"].run_dir)
    assert not pipe.model.training and pipe.data.name == "fashion_mnist"
    assert pipe.data.class_names[0] == "T-shirt/top" and pipe.data.image_shape == (1, 28, 28)
    x = pipe.sample(5, seed=3)
    assert x.shape == (5, 1, 28, 28) and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert torch.equal(x, pipe.sample(5, seed=3)) and not torch.equal(x, pipe.sample(5, seed=4))
    assert pipe.encode(x).shape == (5, 2)
    assert torch.equal(pipe.decode(pipe.encode(x)), pipe.reconstruct(x))
    assert torch.equal(
        pipe.reconstruct((x * 255).to(torch.uint8)),
        pipe.reconstruct((x * 255).to(torch.uint8).float() / 255),
    )
    with pytest.raises(GenlabError, match="steer a diffusion sampler"):
        pipe.sample(2, sampler="ddim")
    with pytest.raises(GenlabError, match=r"shape \[n, 1, 28, 28\]"):
        pipe.encode(torch.zeros(2, 3, 32, 32))


def test_conditional_labels(runs):
    cvae = genlab.load(runs["cvae"].run_dir)
    assert torch.equal(cvae.sample(4, labels=3, seed=0), cvae.sample(4, [3, 3, 3, 3], seed=0))
    x = cvae.sample(4, labels=[0, 1, 2, 3], seed=0)
    with pytest.raises(GenlabError, match="pass y="):
        cvae.encode(x)
    assert cvae.reconstruct(x, y=[0, 1, 2, 3]).shape == x.shape
    with pytest.raises(GenlabError, match=r"each in 0\.\.9"):
        cvae.sample(2, labels=10)
    with pytest.raises(GenlabError, match="unconditional"):
        genlab.load(runs["vae"].run_dir).sample(2, labels=1)


def test_refusals_are_the_models_own():
    from genlab.models import AE

    ae = Pipeline(AE(latent_dim=2).eval(), DataInfo(None, (1, 28, 28), 10, None), "here")
    with pytest.raises(GenlabError, match="not a generative model"):
        ae.sample(4)


def test_ddpm_sampler_choice(runs):
    ddpm = genlab.load(runs["ddpm"].run_dir)
    with pytest.raises(GenlabError, match="has no encoder"):
        ddpm.encode(torch.zeros(1, 1, 28, 28))
    dpm = ddpm.sample(3, sampler="dpmpp_2m", steps=5, seed=0)
    assert dpm.shape == (3, 1, 28, 28)
    assert torch.equal(dpm, ddpm.sample(3, sampler="dpmpp_2m", steps=5, seed=0))
    assert not torch.equal(dpm, ddpm.sample(3, sampler="ddim", steps=5, seed=0))
    for bad, message in (
        ({"sampler": "euler"}, "sampler='euler'. sampler must be one of ddpm, ddim, dpmpp_2m"),
        ({"steps": 51}, "between 1 and this DDPM's T=50"),
        ({"guidance_scale": 2.0}, "class-conditional"),
    ):
        with pytest.raises(GenlabError, match=message):
            ddpm.sample(2, **bad)


# -- exports ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vae", "cvae", "ddpm"])
def test_export_samples_bit_identically_and_records_the_run(runs, exports, kind, monkeypatch):
    folder = exports[kind]
    assert sorted(p.name for p in folder.iterdir()) == [CARD, CONFIG, WEIGHTS]
    run = genlab.load(runs[kind].run_dir)
    from_run = run.sample(6, seed=11)

    def refuse(*args, **kwargs):
        raise AssertionError("an export must load without unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    portable = genlab.load(folder)
    assert torch.equal(portable.sample(6, seed=11), from_run)
    assert portable.data == run.data

    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == portable.model.spec.hparams()  # the spec round-trips
    assert config["genlab_version"] == genlab.__version__
    assert config["weights"]["ema"] == (kind == "ddpm")
    card = (folder / "README.md").read_text()
    metrics = json.loads((runs[kind].run_dir / "metrics.json").read_text())
    assert metrics and config["training"]["metrics"] == metrics
    for name, value in metrics.items():
        assert f"| {name} | {value!r} |" in card
    assert "python train.py" in card and "genlab.load(" in card


def test_ddpm_export_holds_the_ema_weights(runs, exports):
    from safetensors.torch import load_file

    from genlab.checkpoints import load_checkpoint

    ckpt = load_checkpoint(genlab.load(runs["ddpm"].run_dir).source)
    saved = load_file(str(exports["ddpm"] / "model.safetensors"))
    assert saved.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(saved[k], v) for k, v in ckpt["state_dict"].items())
    raw = ckpt["current_model_state"]
    assert any(not torch.equal(saved[k], raw[k]) for k in raw if k in saved)


def _copy(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / "copy")


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, named, message",
    [
        (lambda f: (f / "model.safetensors").unlink(), "model.safetensors", "is missing"),
        (lambda f: (f / "config.json").unlink(), "config.json", "is missing"),
        (lambda f: _flip_last_byte(f / "model.safetensors"), "model.safetensors", "sha256"),
        (lambda f: (f / "config.json").write_text("{"), "config.json", "not readable JSON"),
        (
            lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 16),
            "model.safetensors",
            "sha256",
        ),
    ],
    ids=["no-weights", "no-config", "weights-altered", "config-broken", "weights-replaced"],
)
def test_a_damaged_export_is_refused_naming_the_file(exports, tmp_path, damage, named, message):
    folder = _copy(exports["vae"], tmp_path)
    damage(folder)
    with pytest.raises(GenlabError, match=message) as err:
        genlab.load(folder)
    assert str(folder / named) in str(err.value)


def test_weights_that_are_not_safetensors_are_refused_naming_them(exports, tmp_path):
    import hashlib

    folder = _copy(exports["vae"], tmp_path)
    (folder / WEIGHTS).write_bytes(b"\x80\x04not a safetensors file")  # a pickle's first bytes
    config = json.loads((folder / CONFIG).read_text())
    config["files"][WEIGHTS] = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    (folder / CONFIG).write_text(json.dumps(config))
    with pytest.raises(GenlabError, match="not a readable safetensors file") as err:
        genlab.load(folder)
    assert str(folder / WEIGHTS) in str(err.value)


def test_an_edited_config_is_refused_naming_it(exports, tmp_path):
    folder = _copy(exports["vae"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["latent_dim"] = 3  # another network than the weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GenlabError, match="does not fit") as err:
        genlab.load(folder)
    assert str(folder / "model.safetensors") in str(err.value)
    config["model"]["latent_dim"] = -1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GenlabError, match=r"latent_dim=-1") as err:
        genlab.load(folder)
    assert str(folder / "config.json") in str(err.value)


def test_export_cli_writes_a_folder_and_refuses_a_used_one(runs, tmp_path, capsys):
    from genlab.export import main

    main([str(runs["vae"].run_dir), str(tmp_path / "out")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    with pytest.raises(SystemExit) as exit_:
        main([str(runs["vae"].run_dir), str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


# -- docs/python-api.md ----------------------------------------------------------------------------
def test_the_documented_examples_run(data_root, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.setenv("GENLAB_DATA_DIR", str(data_root))
    monkeypatch.setenv("GENLAB_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)
    assert os.path.isdir(namespace["folder"])

"""Files are data (issue 24 section 1), tested as an attacker would: a run folder that ships a
payload.py and names it in its config.yaml, a `_target_` naming an importable class that opens
its `path` argument for writing, `${oc.env:...}` interpolations, a YAML alias bomb, Python tags,
a config.yaml that links out of its folder, a checkpoint whose latent DDPM names such a run as
its autoencoder, and an edited export. Through every entry point that loads from disk
(sample.py, genlab.load, python -m genlab.export, model.autoencoder=, evaluate=, ckpt_path=):
the payload's sentinel file never appears, the victim file never changes, the secret appears
in no output, and each refusal is exit 2 (or a GenlabError) naming the key or the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import REPO, compose_run

import genlab
from genlab import GenlabError
from genlab.checkpoints import RUN_CONFIG
from genlab.export import AE_WEIGHTS, CARD, CONFIG, WEIGHTS, export_run
from genlab.training import run

# A tiny VAE (an autoencoder a latent DDPM can model), its test stage and images off.
BASE = ["data=mnist", "model=vae", "model.mlp.hidden=[32]", "model.latent_dim=4"]
BASE += ["test=false", "save_images=false", "eval.sample_quality=false"]
PRIOR = ["data=mnist", "model=latent_ddpm", "model.timesteps=50", "model.sample_steps=5"]
PRIOR += ["model.mlp.hidden=[16]", "model.warmup_steps=1", "test=false", "save_images=false"]
PRIOR += ["eval.sample_quality=false"]
SECRET = "s3cr3t-token-value-of-the-environment"
PACKAGE = "evilrun"  # the run folder's name: importable as a package from its parent


@pytest.fixture(scope="module")
def base(data_root, tmp_path_factory):
    """A finished tiny VAE run whose checkpoints hold no run config (an older genlab's), so
    a resume or evaluate= compares with the run's config.yaml, the file an attacker edits."""
    out = tmp_path_factory.mktemp("base") / "run"
    run(compose_run(data_root, out, *BASE))
    for ckpt in (out / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)
        state.pop(RUN_CONFIG, None)
        torch.save(state, ckpt)
    return out


@pytest.fixture(scope="module")
def prior(data_root, base, tmp_path_factory):
    """(latent DDPM run, the autoencoder run it was trained on: a copy of `base` of its own)."""
    root = tmp_path_factory.mktemp("prior")
    ae = shutil.copytree(base, root / "ae")
    out = root / "run"
    run(compose_run(data_root, out, *PRIOR, f"model.autoencoder={ae}"))
    return out, ae


# -- hostile run folders ---------------------------------------------------------------------------
class Scene:
    """A hostile copy of `base` in <tmp>/evilrun, with its payload, a sentinel path the payload
    writes when it is imported, and a victim file a class it names would truncate."""

    def __init__(self, base: Path, tmp: Path):
        self.tmp, self.dir = tmp, shutil.copytree(base, tmp / PACKAGE)
        self.sentinel, self.victim = tmp / "SENTINEL", tmp / "victim.txt"
        self.victim.write_text("precious")
        (self.dir / "payload.py").write_text(
            f"import pathlib\npathlib.Path({str(self.sentinel)!r}).write_text('payload ran')\n"
            "class Anything:\n"
            "    def __init__(self, *args, path=None, mode='r', **kwargs):\n"
            "        if path:\n"
            "            open(path, mode).close()\n"
            "Adam = Data = Anything\n"
            "def sched(*args, **kwargs):\n"
            "    return None\n"
        )
        self.config = yaml.safe_load((self.dir / "config.yaml").read_text())

    def write(self, text: str | None = None) -> None:
        (self.dir / "config.yaml").write_text(text if text is not None else yaml.dump(self.config))

    @property
    def env(self) -> dict[str, str]:
        """The run's parent on the import path (a notebook or `python -m` started there)."""
        paths = [str(self.tmp), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "GENLAB_SECRET": SECRET}

    def assert_harmless(self, *outputs: str) -> None:
        assert not self.sentinel.exists(), "the payload ran"
        assert self.victim.read_text() == "precious", "the victim file was written"
        assert f"{PACKAGE}.payload" not in sys.modules
        for text in outputs:
            assert SECRET not in text


def _edit(key: str, value):
    def edit(scene: Scene) -> None:
        *parents, last = key.split(".")
        node = scene.config
        for part in parents:
            node = node[part]
        node[last] = value(scene) if callable(value) else value
        scene.write()

    return edit


def _many(*edits):
    def edit(scene: Scene) -> None:
        for one in edits:
            one(scene)

    return edit


def _alias_bomb(scene: Scene) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = yaml.dump(scene.config) + "\n".join(lines) + "\n"
    assert len(text.encode()) < 4096 and "*a7" in text  # 9**9 strings once expanded
    scene.write(text)


def _python_tag(scene: Scene) -> None:
    command = f"touch {scene.sentinel}"
    scene.write(yaml.dump(scene.config) + f"extra: !!python/object/apply:os.system [{command!r}]\n")


def _links_out(scene: Scene) -> None:
    outside = scene.tmp / "private.yaml"
    outside.write_text(yaml.dump(scene.config))  # a readable config: only the link is wrong
    (scene.dir / "config.yaml").unlink()
    (scene.dir / "config.yaml").symlink_to(outside)


# name -> (edit of the run folder, what the refusal must name)
HOSTILE = {
    "data-target-payload": (_edit("data._target_", f"{PACKAGE}.payload.Data"), "data._target_"),
    "optimizer-target-payload": (
        _edit("model.optimizer._target_", f"{PACKAGE}.payload.Adam"),
        "model.optimizer._target_",
    ),
    "scheduler-target-payload": (
        _edit("scheduler", {"_target_": f"{PACKAGE}.payload.sched", "_partial_": True}),
        "scheduler._target_",
    ),
    "data-class-truncates-victim": (
        _many(
            _edit("data._target_", f"{PACKAGE}.payload.Anything"),
            _edit("data.path", lambda s: str(s.victim)),
            _edit("data.mode", "w"),
        ),
        "data._target_",
    ),
    "stdlib-class-truncates-victim": (
        _many(
            _edit("data._target_", "logging.FileHandler"),
            _edit("data.filename", lambda s: str(s.victim)),
            _edit("data.mode", "w"),
        ),
        "data._target_",
    ),
    "unknown-data-source": (_edit("data.name", f"{PACKAGE}.payload"), "data.name"),
    "data-key-of-another-source": (_edit("data.path", lambda s: str(s.victim)), "data.path"),
    "model-name-payload": (_edit("model.name", f"{PACKAGE}.payload"), "model.name"),
    "env-interpolation": (_edit("name", "${oc.env:GENLAB_SECRET}"), "interpolation"),
    "alias-bomb": (_alias_bomb, "alias"),
    "python-tag": (_python_tag, "python/object"),
    "config-links-out-of-the-run": (_links_out, "outside its folder"),
}
# What a resume or evaluate= compares with a checkpoint's config.yaml: its model section comes
# from the checkpoint and keys the command line lacks are not compared, so these are the edits
# it sees (and refuses); the others reach nothing there either.
COMPARED = [
    "data-target-payload",
    "scheduler-target-payload",
    "data-class-truncates-victim",
    "stdlib-class-truncates-victim",
    "unknown-data-source",
    "env-interpolation",
    "alias-bomb",
    "python-tag",
    "config-links-out-of-the-run",
]


@pytest.fixture
def scene(base, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))  # the payload is importable in this process too
    monkeypatch.setenv("GENLAB_SECRET", SECRET)
    made = Scene(base, tmp_path)
    yield made
    sys.modules.pop(f"{PACKAGE}.payload", None)
    sys.modules.pop(PACKAGE, None)


def _python(scene: Scene, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=scene.tmp,
        env=scene.env,
        capture_output=True,
        text=True,
        timeout=600,  # generous: a hang is what the alias bomb did; no timing is asserted
    )


def test_the_payload_is_live_when_imported(scene):
    """The attack is real: from the run's parent, importing the name the config gives runs the
    payload (so the sentinel's absence below means genlab did not import it)."""
    result = _python(scene, "-c", f"import {PACKAGE}.payload")
    assert result.returncode == 0, result.stderr
    assert scene.sentinel.read_text() == "payload ran"


# -- entry points ----------------------------------------------------------------------------------
def _sample_cli(scene: Scene, data_root) -> tuple[int, str]:
    out = scene.tmp / "samples"
    result = _python(scene, str(REPO / "sample.py"), f"run={scene.dir}", "n=2", f"out_dir={out}")
    return result.returncode, result.stdout + result.stderr


def _export_cli(scene: Scene, data_root) -> tuple[int, str]:
    out = scene.tmp / "export"
    result = _python(scene, "-m", "genlab.export", str(scene.dir), str(out))
    assert result.returncode == 0 or not out.exists()
    return result.returncode, result.stdout + result.stderr


def _in_process(call):
    try:
        call()
    except GenlabError as err:
        return 2, str(err)
    return 0, ""


def _load(scene: Scene, data_root) -> tuple[int, str]:
    return _in_process(lambda: genlab.load(scene.dir))


def _autoencoder(scene: Scene, data_root) -> tuple[int, str]:
    overrides = [*PRIOR, f"model.autoencoder={scene.dir}", "trainer.max_epochs=1"]
    return _in_process(lambda: run(compose_run(data_root, scene.tmp / "prior", *overrides)))


def _evaluate(scene: Scene, data_root) -> tuple[int, str]:
    cfg = compose_run(data_root, scene.tmp / "eval", *BASE, f"evaluate={scene.dir}")
    return _in_process(lambda: run(cfg))


def _resume(scene: Scene, data_root) -> tuple[int, str]:
    overrides = [*BASE, f"ckpt_path={scene.dir}", "trainer.max_epochs=2"]
    return _in_process(lambda: run(compose_run(data_root, scene.tmp / "resumed", *overrides)))


def _export(scene: Scene, data_root) -> tuple[int, str]:
    code, output = _in_process(lambda: export_run(scene.dir, scene.tmp / "export"))
    assert code == 0 or not (scene.tmp / "export").exists()
    return code, output


ENTRY_POINTS = {
    "genlab.load": _load,
    "export_run": _export,
    "model.autoencoder": _autoencoder,
}
# The command lines, each a process of its own (seconds each): a share of the edits.
COMMANDS = {"sample.py": _sample_cli, "python -m genlab.export": _export_cli}
FOR_COMMANDS = [
    "data-target-payload",
    "optimizer-target-payload",
    "data-class-truncates-victim",
    "env-interpolation",
    "alias-bomb",
    "python-tag",
]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_a_hostile_run_folder_reaches_no_code(scene, data_root, hostile, entry):
    edit, named = HOSTILE[hostile]
    edit(scene)
    code, output = ENTRY_POINTS[entry](scene, data_root)
    assert code == 2 and named in output, output
    scene.assert_harmless(output)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("hostile", FOR_COMMANDS)
def test_a_command_on_a_hostile_run_folder_exits_2_and_reaches_no_code(
    scene, data_root, hostile, command
):
    edit, named = HOSTILE[hostile]
    edit(scene)
    code, output = COMMANDS[command](scene, data_root)
    assert code == 2, output
    assert named in output and "Traceback" not in output and len(output.splitlines()) < 5
    scene.assert_harmless(output)


@pytest.mark.parametrize("entry", [_evaluate, _resume], ids=["evaluate=", "ckpt_path="])
@pytest.mark.parametrize("hostile", COMPARED)
def test_a_hostile_config_beside_a_checkpoint_is_compared_never_acted_on(
    scene, data_root, hostile, entry
):
    edit, named = HOSTILE[hostile]
    edit(scene)
    code, output = entry(scene, data_root)
    assert code == 2 and named in output, output
    assert not (scene.tmp / "resumed" / "checkpoints").exists()
    scene.assert_harmless(output)


@pytest.mark.parametrize(
    "entry",
    [_sample_cli, _export_cli, _load, _export, _autoencoder, _evaluate, _resume],
    ids=lambda f: f.__name__,
)
def test_the_same_folder_unedited_works_and_runs_no_payload(scene, data_root, entry):
    """The control: with the payload beside it but not named, every entry point succeeds."""
    code, output = entry(scene, data_root)
    assert code == 0, output
    scene.assert_harmless(output)


# -- the command line -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, key",
    [
        (f"data._target_={PACKAGE}.payload.Data", "data._target_"),
        (f"model._target_={PACKAGE}.payload.Anything", "model._target_"),
        (f"model.optimizer._target_={PACKAGE}.payload.Adam", "model.optimizer._target_"),
        (f"+scheduler._target_={PACKAGE}.payload.sched", "scheduler._target_"),
        ("model.optimizer._target_=builtins.open", "model.optimizer._target_"),
    ],
)
def test_the_command_line_names_classes_from_the_registry_only(scene, data_root, override, key):
    """Even the trusted command line maps `_target_` to genlab's allow lists: the same
    string as in a file is refused the same way, before anything is built."""
    cfg = compose_run(data_root, scene.tmp / "run", *BASE, override)
    with pytest.raises(GenlabError, match="not one genlab offers") as err:
        run(cfg)
    assert key in str(err.value)
    assert not (scene.tmp / "run" / "checkpoints").exists()
    scene.assert_harmless(str(err.value))


# -- forged checkpoints ----------------------------------------------------------------------------
def _forge(scene: Scene, field: str) -> None:
    """Every checkpoint of the scene's run with one field naming the payload."""
    for ckpt in (scene.dir / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)
        if field == "optimizer":
            state["hyper_parameters"]["optimizer"]["_target_"] = f"{PACKAGE}.payload.Adam"
        elif field == "model-name":
            state["hyper_parameters"]["name"] = f"{PACKAGE}.payload"
        else:  # the run config a resume compares with
            config = json.loads(json.dumps(scene.config))
            config["data"]["_target_"] = f"{PACKAGE}.payload.Data"
            state[RUN_CONFIG] = config
        torch.save(state, ckpt)


def test_a_checkpoint_linking_out_of_the_run_is_refused(scene, tmp_path):
    """A run whose checkpoint is a link to a file elsewhere (one of the user's, or a device)
    loads nothing from there."""
    elsewhere = tmp_path / "elsewhere.ckpt"
    for ckpt in (scene.dir / "checkpoints").glob("*.ckpt"):
        shutil.move(ckpt, elsewhere)
        ckpt.symlink_to(elsewhere)
    code, output = _load(scene, None)
    assert code == 2 and "outside" in output and str(elsewhere) in output, output
    scene.assert_harmless(output)


# field -> (what each entry point does: 0 loads, or the key its refusal names)
FORGED = {
    "optimizer": {"load": 0, "evaluate": "model.optimizer._target_", "resume": "optimizer"},
    "run-config": {"load": 0, "evaluate": "data._target_", "resume": "data._target_"},
    "model-name": {"load": "evilrun.payload", "evaluate": "evilrun.payload", "resume": "model"},
}


@pytest.mark.parametrize("entry", ["load", "evaluate", "resume"])
@pytest.mark.parametrize("field", list(FORGED))
def test_a_forged_checkpoint_reaches_no_code(scene, data_root, field, entry):
    """A checkpoint's hyperparameters and stored run config are data: compared with the
    command line, used to pick a model from the registry, never imported."""
    _forge(scene, field)
    call = {"load": _load, "evaluate": _evaluate, "resume": _resume}[entry]
    code, output = call(scene, data_root)
    expected = FORGED[field][entry]
    if expected == 0:
        assert code == 0, output
    else:
        assert code == 2 and expected in output, output
    scene.assert_harmless(output)


# -- a checkpoint that names such a run ------------------------------------------------------------
@pytest.mark.parametrize("hostile", ["data-target-payload", "optimizer-target-payload",
                                     "alias-bomb", "env-interpolation"])  # fmt: skip
def test_a_checkpoint_naming_a_hostile_autoencoder_reaches_no_code(scene, prior, hostile):
    """A weights-only checkpoint of a latent DDPM whose hyper_parameters.autoencoder points at
    a hostile run: loading it reads that run as data and refuses it."""
    out, _ = prior
    ckpt = next((out / "checkpoints").glob("epoch=*.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["autoencoder"] = str(scene.dir)
    forged = scene.tmp / "forged.ckpt"
    torch.save(state, forged)
    edit, named = HOSTILE[hostile]
    edit(scene)
    with pytest.raises(GenlabError, match="no longer loads") as err:
        genlab.load(forged)
    assert named in str(err.value)
    scene.assert_harmless(str(err.value))


def test_sample_py_on_a_checkpoint_naming_a_hostile_autoencoder_exits_2(scene, prior):
    out, _ = prior
    ckpt = next((out / "checkpoints").glob("epoch=*.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["autoencoder"] = str(scene.dir)
    forged = scene.tmp / "forged.ckpt"
    torch.save(state, forged)
    HOSTILE["data-target-payload"][0](scene)
    result = _python(scene, str(REPO / "sample.py"), f"run={forged}", "n=2")
    assert result.returncode == 2 and "data._target_" in result.stderr, result.stderr
    scene.assert_harmless(result.stdout + result.stderr)


def test_a_latent_ddpm_naming_itself_as_its_autoencoder_is_refused(prior, tmp_path):
    """A loop (the prior's own run as its autoencoder) ends in one message, not a recursion."""
    out, _ = prior
    ckpt = next((out / "checkpoints").glob("epoch=*.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["autoencoder"] = str(tmp_path)
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    forged = tmp_path / "checkpoints" / ckpt.name
    torch.save(state, forged)
    for path in (forged, tmp_path):
        with pytest.raises(GenlabError, match="holds a latent_ddpm, where one of ae, vae, vqvae"):
            genlab.load(path)


# -- exports ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prior_export(prior, tmp_path_factory):
    out, _ = prior
    return export_run(out, tmp_path_factory.mktemp("exports") / "prior")


def test_a_latent_ddpm_export_is_self_contained(prior, prior_export, tmp_path, monkeypatch):
    out, ae = prior
    from_run = genlab.load(out).sample(4, seed=5)
    assert sorted(p.name for p in prior_export.iterdir()) == sorted(
        [AE_WEIGHTS, CARD, CONFIG, WEIGHTS]
    )
    config = json.loads((prior_export / CONFIG).read_text())
    assert set(config["files"]) == {AE_WEIGHTS, CARD, WEIGHTS}
    assert config["model"]["autoencoder"] == AE_WEIGHTS
    assert config["autoencoder"]["model"]["name"] == "vae"
    for name in (CONFIG, CARD):  # no path of this machine is recorded
        assert str(ae.parent) not in (prior_export / name).read_text()
    moved = tmp_path / "moved"
    shutil.move(ae, moved)
    try:

        def refuse(*args, **kwargs):
            raise AssertionError("an export loads without torch.load")

        monkeypatch.setattr(torch, "load", refuse)
        portable = genlab.load(prior_export)
        assert torch.equal(portable.sample(4, seed=5), from_run)
        assert portable.model.autoencoder.kind == "vae"
    finally:
        monkeypatch.undo()
        shutil.move(moved, ae)


def test_an_export_holds_no_secret_of_the_environment(base, tmp_path, monkeypatch):
    """Interpolations in the run's records are text, never resolved: the overrides Hydra
    recorded go into the model card as written, the secret's value nowhere."""
    monkeypatch.setenv("GENLAB_SECRET", SECRET)
    run_dir = shutil.copytree(base, tmp_path / "run")
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- name=${oc.env:GENLAB_SECRET}\n")
    (run_dir / "metrics.json").write_text(json.dumps({"val/loss": 1.5}))
    folder = export_run(run_dir, tmp_path / "out")
    for path in folder.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path.name
    assert "name=${oc.env:GENLAB_SECRET}" in (folder / CARD).read_text()
    assert genlab.load(folder).kind == "vae"


@pytest.mark.parametrize(
    "records, named",
    [
        ({"metrics.json": '{"val/loss": {"nested": 1}}'}, "val/loss"),
        ({"metrics.json": "[" * 100000 + "]" * 100000}, "nested too deeply"),
        ({"metrics.json": "[1, 2]"}, "not a table"),
        ({".hydra/overrides.yaml": "a: &x [1]\nb: *x\n"}, "anchor"),
        ({".hydra/overrides.yaml": "- !!python/object/apply:os.getcwd []\n"}, "python/object"),
        ({".hydra/overrides.yaml": "{model: vae}\n"}, "not a list of overrides"),
    ],
    ids=[
        "metric-not-a-number",
        "deep-json",
        "metrics-not-a-table",
        "overrides-alias",
        "overrides-python-tag",
        "overrides-not-a-list",
    ],  # fmt: skip
)
def test_hostile_run_records_are_refused_by_the_export(base, tmp_path, records, named):
    run_dir = shutil.copytree(base, tmp_path / "run")
    for name, text in records.items():
        (run_dir / name).parent.mkdir(exist_ok=True)
        (run_dir / name).write_text(text)
    with pytest.raises(GenlabError) as err:
        export_run(run_dir, tmp_path / "out")
    assert named in str(err.value) and str(run_dir) in str(err.value)
    assert not (tmp_path / "out").exists()


def _set(*path, value):
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _drop(*path):
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


EDITED_CONFIGS = {
    "extra-top-key": (_set("_target_", value="evilrun.payload.Data"), "_target_"),
    "extra-model-key": (_set("model", "_target_", value="evilrun.payload.Anything"), "_target_"),
    "extra-weights-key": (_set("weights", "path", value="/etc/passwd"), "weights.path"),
    "extra-training-key": (_set("training", "command", value="rm -rf /"), "training.command"),
    "other-model-type": (_set("model", "name", value="evilrun.payload"), "evilrun.payload"),
    "autoencoder-is-a-latent-ddpm": (
        _set("autoencoder", "model", "name", value="latent_ddpm"),
        "latent_ddpm",
    ),
    "extra-autoencoder-key": (
        _set("autoencoder", "model", "optimizer", "_target_", value="evilrun.payload.Adam"),
        "optimizer._target_",
    ),
    "no-autoencoder": (_set("autoencoder", value=None), "autoencoder"),
    "old-format": (_set("format_version", value=1), "format_version"),
    "unrecorded-file": (_drop("files", AE_WEIGHTS), AE_WEIGHTS),
    "extra-recorded-file": (_set("files", "payload.py", value="0" * 64), "payload.py"),
    "other-weights-file": (_set("weights", "file", value="../x.safetensors"), "weights.file"),
    "wrong-type": (_set("weights", "ema", value="yes"), "weights.ema"),
    "missing-section": (_drop("training"), "training"),
}


@pytest.mark.parametrize("edited", list(EDITED_CONFIGS))
def test_an_edited_export_config_is_refused_naming_the_file_and_key(prior_export, tmp_path, edited):
    folder = shutil.copytree(prior_export, tmp_path / "copy")
    config = json.loads((folder / CONFIG).read_text())
    edit, named = EDITED_CONFIGS[edited]
    edit(config)
    (folder / CONFIG).write_text(json.dumps(config))
    with pytest.raises(GenlabError) as err:
        genlab.load(folder)
    assert str(folder / CONFIG) in str(err.value) and named in str(err.value), str(err.value)


@pytest.mark.parametrize("name", [AE_WEIGHTS, CARD, WEIGHTS])
@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_every_file_of_an_export_is_covered_by_its_sha256(prior_export, tmp_path, name, damage):
    folder = shutil.copytree(prior_export, tmp_path / "copy")
    if damage == "missing":
        (folder / name).unlink()
    else:
        data = bytearray((folder / name).read_bytes())
        data[-1] ^= 0x01
        (folder / name).write_bytes(bytes(data))
    with pytest.raises(GenlabError, match="is missing" if damage == "missing" else "sha256") as err:
        genlab.load(folder)
    assert str(folder / name) in str(err.value)


def test_a_script_loading_an_edited_export_gets_the_genlab_error(prior_export, tmp_path):
    folder = shutil.copytree(prior_export, tmp_path / "copy")
    config = json.loads((folder / CONFIG).read_text())
    config["model"]["bogus"] = 1
    (folder / CONFIG).write_text(json.dumps(config))
    code = "import genlab, sys\ntry:\n    genlab.load(sys.argv[1])\nexcept genlab.GenlabError as e:"
    code += "\n    print(e)\n    sys.exit(2)"
    result = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 2 and "bogus" in result.stdout and str(folder) in result.stdout

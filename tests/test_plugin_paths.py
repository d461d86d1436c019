"""A model of one's own on every path that composes a command (docs/extending.md, "Registering
it"): named in the user's own config folder (`--config-dir`, hydra.searchpath) it trains through
train.py, a sweep's own-process jobs and a Slurm job, without `plugins=` on the command line;
`genlab.train` trains the plugin's own class; a sweep over `model.sampler` gives each job, and its
test stage, the sampler asked for; and a run's own files still import nothing."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import test_slurm
from fixtures import FAST, TINY_DDPM
from test_extending import EXAMPLES, PLUGIN, SEARCHPATH, env, python, sweep_of_the_example, tiny

CONF = EXAMPLES / "conf"
CONFIG_DIR = ("--config-dir", str(CONF))
slurm = test_slurm.slurm  # the fixture: a local Slurm cluster (skipped where Slurm is missing)


def settings(data_root) -> list[str]:
    """test_extending's tiny beta-TCVAE run, without naming its module or its config folder."""
    return [a for a in tiny(data_root) if a not in (PLUGIN, SEARCHPATH, "model=betatcvae")]


def bare_folder(root: Path) -> Path:
    """examples/conf without the line of model/betatcvae.yaml that names its module."""
    folder = root / "bare_conf"
    (folder / "model").mkdir(parents=True)
    text = (CONF / "model" / "betatcvae.yaml").read_text()
    assert "- /_betatcvae_plugin_@_global_" in text
    lines = [line for line in text.splitlines() if "_betatcvae_plugin_" not in line]
    (folder / "model" / "betatcvae.yaml").write_text("\n".join(lines) + "\n")
    return folder


# -- the user's config folder names the module ---------------------------------------------------
@pytest.fixture(scope="module")
def folder_run(data_root, tmp_path_factory) -> Path:
    """`python train.py --config-dir examples/conf model=betatcvae ...`: no plugins=."""
    out = tmp_path_factory.mktemp("folder") / "run"
    args = ("train.py", *CONFIG_DIR, "model=betatcvae", *settings(data_root))
    result = python(*args, f"hydra.run.dir={out}", cwd=out.parent, environ=env(EXAMPLES))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_users_model_config_names_its_module_and_train_py_trains_it(folder_run):
    metrics = json.loads((folder_run / "metrics.json").read_text())
    for key in ("test/tc", "test/mi", "test/dim_kl", "train/tc"):  # the plugin's own metrics
        assert key in metrics and metrics[key] == metrics[key], key
    saved = (folder_run / "config.yaml").read_text()
    assert "plugins:\n- betatcvae" in saved and "_target_: betatcvae.model.BetaTCVAE" in saved
    # --config-dir reaches Hydra as hydra.searchpath (what a sweep's jobs are given too).
    assert f"file://{CONF}" in (folder_run / ".hydra" / "hydra.yaml").read_text()


def test_an_experiment_of_the_users_folder_names_the_module_too(tmp_path):
    """A `# @package _global_` preset setting `plugins` with the model; the model's own keys are
    checked by its spec on that path; a command line's plugins= replaces the preset's list."""
    folder = bare_folder(tmp_path)
    (folder / "experiment").mkdir()
    (folder / "experiment" / "tc.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: betatcvae\n"
        "plugins: [betatcvae]\nmodel:\n  gamma: 3.0\n"
    )
    base = ("train.py", f"hydra.searchpath=[file://{folder}]", "experiment=tc")
    shown = python(*base, "--cfg", "job", cwd=tmp_path, environ=env(EXAMPLES))
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "name: betatcvae" in shown.stdout and "gamma: 3.0" in shown.stdout
    assert "plugins:\n- betatcvae" in shown.stdout

    bad = python(*base, "model.alpha=-1", cwd=tmp_path, environ=env(EXAMPLES))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "model.alpha=-1. model.alpha must be a number >= 0" in bad.stderr

    replaced = python(*base, "plugins=[]", "--cfg", "job", cwd=tmp_path, environ=env(EXAMPLES))
    assert replaced.returncode == 2
    assert "genlab knows no model 'betatcvae'" in replaced.stderr
    assert not (tmp_path / "outputs").exists()


def test_hydras_help_composes_the_users_model_too(tmp_path):
    """--help is Hydra's own job, not prechecked: it still composes with the module imported."""
    shown = python("train.py", *CONFIG_DIR, "model=betatcvae", "--help", cwd=tmp_path,
                   environ=env(EXAMPLES))  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "name: betatcvae" in shown.stdout and "gamma: 1.0" in shown.stdout


def test_a_sweep_from_the_users_folder_imports_the_module_in_each_jobs_process(data_root, tmp_path):
    jobs = sweep_of_the_example([*CONFIG_DIR, "model=betatcvae", *settings(data_root)], tmp_path)
    for job, beta in zip(jobs, (1, 4), strict=True):
        assert "test/tc" in json.loads((job / "metrics.json").read_text())
        saved = (job / "config.yaml").read_text()
        assert "plugins:\n- betatcvae" in saved and f"beta: {beta}" in saved


def test_a_runs_files_naming_a_module_import_nothing_on_the_folder_route(
    folder_run, data_root, tmp_path
):
    """A forged copy of the run (config.yaml and Hydra's records naming `plugins: [evil]`) scored
    with evaluate= and resumed in place, both through the config folder: `evil` never runs."""
    sentinel, modules = tmp_path / "imported", tmp_path / "modules"
    modules.mkdir()
    (modules / "evil.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('imported')\nGENLAB_MODELS = ()\n"
    )
    forged = tmp_path / "forged"
    shutil.copytree(folder_run, forged)
    for path in (forged / "config.yaml", *(forged / ".hydra").glob("*.yaml")):
        path.write_text(path.read_text().replace("- betatcvae", "- evil"))
    assert "plugins:\n- evil" in (forged / "config.yaml").read_text()
    base = ("train.py", *CONFIG_DIR, "model=betatcvae", *settings(data_root))
    scored = python(
        *base,
        f"evaluate={forged}",
        f"hydra.run.dir={tmp_path / 'scored'}",
        cwd=tmp_path,
        environ=env(EXAMPLES, modules),
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "test/tc" in json.loads((tmp_path / "scored" / "metrics.json").read_text())
    resumed = python(
        *base,
        f"hydra.run.dir={forged}",
        f"ckpt_path={forged / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_epochs=2",
        cwd=tmp_path,
        environ=env(EXAMPLES, modules),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not sentinel.exists()


def test_compose_reads_plugins_with_stand_ins_and_leaves_none_behind(tmp_path, monkeypatch):
    """In process: a folder whose model config names a module; only `user_plugins=True` (a
    command's own composition) imports it, and the stand-in spec node does not stay."""
    from hydra.core.config_store import ConfigStore
    from hydra.errors import MissingConfigException

    from genlab import GenlabError
    from genlab.composition import compose

    folder, modules = tmp_path / "conf", tmp_path / "modules"
    (folder / "model").mkdir(parents=True)
    modules.mkdir()
    (folder / "model" / "mine.yaml").write_text(
        "defaults:\n  - /_mine_spec_@_here_\n  - /_mine_plugin_@_global_\n  - _self_\n"
    )
    (folder / "_mine_plugin_.yaml").write_text("plugins: [genlab_test_mine]\n")
    sentinel = tmp_path / "imported"
    (modules / "genlab_test_mine.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('imported')\nGENLAB_MODELS = ()\n"
    )
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.delitem(sys.modules, "genlab_test_mine", raising=False)
    overrides = [f"hydra.searchpath=[file://{folder}]", "model=mine", "model.width=3"]
    with pytest.raises(MissingConfigException, match="_mine_spec_"):
        compose("train", overrides)
    assert not sentinel.exists()
    with pytest.raises(GenlabError, match="genlab_test_mine lists no models"):
        compose("train", overrides, user_plugins=True)  # read, imported, refused by its content
    assert sentinel.exists()
    assert "_mine_spec_.yaml" not in ConfigStore.instance().repo


def test_config_dir_becomes_the_first_folder_of_hydra_searchpath(tmp_path):
    from genlab import GenlabError
    from genlab.cli import config_dir_as_searchpath

    mine, other = tmp_path / "mine", "file:///somewhere/else"
    mine.mkdir()
    argv = ["-m", "--config-dir", str(mine), "a=1", f"hydra.searchpath=[{other}]", "--cfg", "job"]
    assert config_dir_as_searchpath(argv) == [
        "-m",
        f"hydra.searchpath=['file://{mine}','{other}']",
        "a=1",
        "--cfg",
        "job",
    ]
    assert config_dir_as_searchpath([f"-cd={mine}"]) == [f"hydra.searchpath=['file://{mine}']"]
    assert config_dir_as_searchpath(["a=1", "--cfg", "job"]) == ["a=1", "--cfg", "job"]
    # Hydra's argparse takes the overrides as one run of arguments: the new one joins them.
    assert config_dir_as_searchpath(["a=1", "--cfg", "job", "-cd", str(mine)]) == [
        f"hydra.searchpath=['file://{mine}']",
        "a=1",
        "--cfg",
        "job",
    ]
    # A primary config of the folder's: Hydra's main looks for it in its own search path only.
    assert config_dir_as_searchpath(["-cd", f"{mine}/.", "-cn", "my_train", "a=1"]) == [
        "-cd",
        str(mine),
        "-cn",
        "my_train",
        f"hydra.searchpath=['file://{mine}']",
        "a=1",
    ]
    with pytest.raises(GenlabError, match="--config-dir nowhere: no such folder"):
        config_dir_as_searchpath(["--config-dir", "nowhere"])


# -- the Python API ------------------------------------------------------------------------------
TRAIN_AND_LOAD = """
import json, sys, genlab
metrics, run_dir = genlab.train(sys.argv[1:])
pipe = genlab.load(run_dir)
print(json.dumps({
    "metrics": sorted(metrics),
    "class": f"{type(pipe.model).__module__}.{type(pipe.model).__qualname__}",
    "kind": pipe.kind,
    "run_dir": str(run_dir),
}))
"""


@pytest.mark.parametrize("named_by", ["plugins=", "config folder"])
def test_genlab_train_trains_the_plugins_own_class(data_root, tmp_path, named_by):
    """genlab.train([..., "plugins=[betatcvae]"]) with a folder that does not name the module,
    and genlab.train with examples/conf, which does: the model trained is BetaTCVAE."""
    if named_by == "plugins=":
        route = [PLUGIN, f"hydra.searchpath=[file://{bare_folder(tmp_path)}]"]
    else:
        route = [SEARCHPATH]
    out = tmp_path / "run"
    args = [*route, "model=betatcvae", *settings(data_root), f"hydra.run.dir={out}"]
    result = python("-c", TRAIN_AND_LOAD, *args, cwd=tmp_path, environ=env(EXAMPLES))
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["class"] == "betatcvae.model.BetaTCVAE" and answer["kind"] == "betatcvae"
    assert {"test/tc", "test/mi", "test/dim_kl", "val/tc"} <= set(answer["metrics"])
    assert Path(answer["run_dir"]) == out
    import torch

    ckpt = next((out / "checkpoints").glob("*.ckpt"))
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["name"] == "betatcvae" and hparams["gamma"] == 1.0


# -- a sweep over model.sampler ------------------------------------------------------------------
# `python train.py -m ...` in a process that records, in each job's dir, the samplers the test
# stage's sample-quality draws were made with (the DDPM builds one per batch of samples).
SAMPLER_SPY = """
import json, sys
from pathlib import Path
from hydra.core.hydra_config import HydraConfig
import genlab.models.ddpm.model as ddpm
from genlab.metrics.quality import SampleQuality

made = []
make_sampler, generate = ddpm.make_sampler, SampleQuality._generate

def spy_make(name, *args, **kwargs):
    made.append(name)
    return make_sampler(name, *args, **kwargs)

def spy_generate(self, pl_module, n, seed):
    made.clear()
    out = generate(self, pl_module, n, seed)
    record = Path(HydraConfig.get().runtime.output_dir) / "test_stage_samplers.json"
    record.write_text(json.dumps(made))
    return out

ddpm.make_sampler, SampleQuality._generate = spy_make, spy_generate
sys.argv = ["train.py", *sys.argv[1:]]
from genlab.commands import train
train()
"""


def test_a_sweep_over_model_sampler_gives_each_job_and_its_test_stage_that_sampler(
    data_root, tmp_path
):
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m",
        *TINY_DDPM,
        "model.sampler=ddim,dpmpp_2m",
        f"paths.data_dir={data_root}",
        "data=mnist",
        *FAST,
        "trainer.limit_train_batches=2",
        "eval.num_samples=12",
        "eval.kid_subset_size=6",
        "eval.batch_size=5",
        "eval.bound_images=0",
        "save_images=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = python("-c", SAMPLER_SPY, *args, cwd=tmp_path, environ=env())
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [p.name for p in jobs] == ["0_sampler=ddim", "1_sampler=dpmpp_2m"]
    import torch

    for job, sampler in zip(jobs, ("ddim", "dpmpp_2m"), strict=True):
        assert f"  sampler: {sampler}\n" in (job / "config.yaml").read_text()
        assert "test/fid_domain" in json.loads((job / "metrics.json").read_text())
        # 12 samples in batches of 5: three draws, each with the job's sampler.
        assert json.loads((job / "test_stage_samplers.json").read_text()) == [sampler] * 3
        ckpt = next((job / "checkpoints").glob("*.ckpt"))
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert state["hyper_parameters"]["sampler"] == sampler


# -- Slurm -------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.slow
def test_a_slurm_job_imports_the_module_its_config_folder_names(slurm, data_root, tmp_path):
    """A Slurm job runs in a process of its own on a node: it composes the job from the sweep's
    config folder and imports the module before it builds the model."""
    sweep_dir = tmp_path / "sweep"
    slurm.env["PYTHONPATH"] = env(EXAMPLES)["PYTHONPATH"]
    proc = test_slurm.start_sweep(
        slurm,
        tmp_path,
        *CONFIG_DIR,
        "model=betatcvae",
        *settings(data_root),
        "model.beta=1,4",
        f"hydra.sweep.dir={sweep_dir}",
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [p.name for p in jobs] == ["0_beta=1", "1_beta=4"]
    for job in jobs:
        record = json.loads((job / "status.json").read_text())
        assert record["status"] == "completed" and record.get("slurm_job_id"), record
        assert "test/tc" in json.loads((job / "metrics.json").read_text())
        assert "plugins:\n- betatcvae" in (job / "config.yaml").read_text()

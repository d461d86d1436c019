"""genlab as a researcher installs it (issue 25): the wheel built from this checkout, installed
into a fresh virtualenv outside the checkout and used from another folder through its commands
(genlab-train, genlab-sample, genlab-export) and its Python API, with a config folder of the
user's own on Hydra's search path; the optional features refused by name when their extra is
missing; the README's set-up command, which CI runs too.

The virtualenv reuses the installed torch etc. (--system-site-packages) and gets genlab alone
(--no-deps); PYTHONPATH is dropped, so every import comes from what is installed."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import numpy as np
import pytest
from fixtures import FAST, REPO

import genlab

# A user's own experiment, found only through hydra.searchpath: the tiny settings of FAST.
TINY = """# @package _global_
model:
  latent_dim: 4
trainer:
  max_epochs: 1
  enable_progress_bar: false
  enable_model_summary: false
  accelerator: cpu
data:
  batch_size: 32
  eval_batch_size: 64
  download: false
  system_dirs: []
eval:
  num_samples: 64
  kid_subset_size: 32
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **extra}


# -- the installed wheel ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def installed(tmp_path_factory, data_root):
    """(venv, wheel, work folder, env): the wheel built from a copy of the checkout's sources,
    installed into a fresh virtualenv; the work folder holds the user's config folder."""
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"  # a copy: no build/ left in the checkout, no stale files in it
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    wheels = root / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [str(source), "-w", str(wheels)],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("genlab-*.whl")
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    # pip from the system site-packages, installing into the venv; --force-reinstall: a genlab
    # installed outside the venv (this checkout, editable) must not count as installed.
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index"]
        + ["--force-reinstall", "-q", str(wheel)],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert done.returncode == 0, done.stderr
    work = root / "work"
    (work / "my_conf" / "experiment").mkdir(parents=True)
    (work / "my_conf" / "experiment" / "tiny.yaml").write_text(TINY)
    env = _clean_env(
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", GENLAB_DATA_DIR=str(data_root)
    )
    return venv, wheel, work, env


def _run(installed, *command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    venv, _, work, env = installed
    program = command[0] if command[0].startswith("/") else str(venv / "bin" / command[0])
    return subprocess.run(
        [program, *command[1:]], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
    )


def _searchpath(installed) -> str:
    return f"hydra.searchpath=[file://{installed[2] / 'my_conf'}]"


@pytest.fixture(scope="module")
def trained(installed) -> Path:
    """The run dir of a tiny training through the installed genlab-train, on the user's own
    experiment config."""
    result = _run(installed, "genlab-train", "experiment=tiny", _searchpath(installed))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (installed[2] / "outputs" / "runs").glob("*/*")
    return run_dir


@pytest.mark.slow
def test_wheel_holds_the_configs_the_type_marker_and_true_metadata(installed):
    _, wheel, _, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for source in (REPO / "conf").rglob("*.yaml"):
            packed = f"genlab/conf/{source.relative_to(REPO / 'conf').as_posix()}"
            assert archive.read(packed) == source.read_bytes(), packed
        assert "genlab/py.typed" in names and "hydra_plugins/genlab_sweep/__init__.py" in names
        assert not any("__pycache__" in name for name in names)
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(info).decode())
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert metadata["Version"] == genlab.__version__
    assert metadata["License-Expression"] == "MIT"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    requires = metadata.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if "==" in r], core  # ranges, never one version
    names_of = lambda rs: {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in rs}
    assert {"torch", "torchvision", "lightning", "hydra-core", "omegaconf"} <= names_of(core)
    assert not names_of(core) & {
        "sqlalchemy",
        "hydra-optuna-sweeper",
        "optuna",
        "hydra-submitit-launcher",
        "torch-fidelity",
        "tensorboard",
        "protobuf",
    }
    assert {"slurm", "optuna", "fid", "tensorboard", "all", "dev"} <= set(
        metadata.get_all("Provides-Extra")
    )
    assert 'sqlalchemy<2; extra == "optuna"' in requires
    for command in ("genlab-train", "genlab-sample", "genlab-export"):
        assert f"{command} = genlab.commands:" in entry_points


@pytest.mark.slow
def test_installed_genlab_is_the_venvs_and_finds_its_configs_and_the_users(installed):
    venv = installed[0]
    code = "import genlab, genlab.composition as c; print(genlab.__file__); print(c.CONF_DIR)"
    result = _run(installed, str(venv / "bin" / "python"), "-c", code)
    module, conf = result.stdout.split()
    assert Path(module).is_relative_to(venv) and not Path(module).is_relative_to(REPO)
    assert Path(conf) == Path(module).parent / "conf" and (Path(conf) / "train.yaml").is_file()
    for command in (["genlab-train"], ["genlab-sample"], [str(venv / "bin" / "python"), "-m"]):
        if command[-1] == "-m":
            command = [*command, "genlab.train"]
        version = _run(installed, *command, "--version")
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip() == f"genlab {genlab.__version__}"
    # The user's folder is read only when it is on the search path.
    missing = _run(installed, "genlab-train", "experiment=tiny")
    assert missing.returncode == 2 and "Unknown option experiment=tiny" in missing.stderr
    job = _run(installed, "genlab-train", "experiment=tiny", _searchpath(installed), "--cfg", "job")
    assert job.returncode == 0 and "latent_dim: 4" in job.stdout


@pytest.mark.slow
def test_installed_train_writes_its_metrics(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert math.isfinite(metrics["val/elbo"]) and metrics["val/elbo"] < 0
    assert "test/elbo" in metrics
    assert (trained / "train.log").is_file() and (trained / "checkpoints" / "last.ckpt").is_file()
    overrides = (trained / ".hydra" / "overrides.yaml").read_text()
    assert "experiment=tiny" in overrides


@pytest.mark.slow
def test_installed_sweep_runs_two_jobs(installed):
    # local_parallel: each job is `python -m genlab.train ...` of its own, the venv's genlab
    result = _run(
        installed,
        "genlab-train",
        "-m",
        "experiment=tiny",
        _searchpath(installed),
        "model.beta=0.5,1.0",
        "test=false",
        "hydra/launcher=local_parallel",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (installed[2] / "outputs" / "multirun").glob("*/*")
    jobs = sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))
    assert [re.sub(r"^\d+_", "", p.name) for p in jobs] == ["beta=0.5", "beta=1.0"]
    for job in jobs:
        assert math.isfinite(json.loads((job / "metrics.json").read_text())["val/elbo"])
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
    assert json.loads((sweep_dir / "sweep.json").read_text())["command"].startswith(
        "genlab-train -m"
    )


@pytest.mark.slow
def test_installed_sample_draws_a_grid(installed, trained):
    from PIL import Image

    out = installed[2] / "pictures"
    result = _run(
        installed, "genlab-sample", f"run={trained}", "task=samples", "n=4", f"out_dir={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = Path(result.stdout.split("wrote ", 1)[1].split()[0])
    assert written.parent == out
    pixels = np.asarray(Image.open(written).convert("L"), dtype=float)
    assert min(pixels.shape) >= 4 * 28  # a 4 x 4 grid of 28 x 28 images
    assert pixels.std() > 5 and 0 < pixels.mean() < 255


@pytest.mark.slow
def test_installed_export_and_python_api(installed, trained):
    venv, _, work, _ = installed
    folder = work / "exported"
    result = _run(installed, "genlab-export", str(trained), str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((trained / "metrics.json").read_text())
    assert config["model"]["latent_dim"] == 4 and config["model"]["name"] == "vae"
    assert config["training"]["metrics"]["val/elbo"] == pytest.approx(metrics["val/elbo"])
    assert "experiment=tiny" in config["training"]["overrides"]
    code = f"""
import json, genlab
pipe = genlab.load({str(folder)!r})
x = pipe.sample(3, seed=0)
metrics, run_dir = genlab.train(["experiment=tiny", {_searchpath(installed)!r}, "test=false",
                                 "paths.output_root=api_outputs"])
print(json.dumps({{"file": genlab.__file__, "shape": list(x.shape), "min": float(x.min()),
                  "max": float(x.max()), "elbo": metrics["val/elbo"], "run_dir": str(run_dir)}}))
"""
    api = _run(installed, str(venv / "bin" / "python"), "-c", code)
    assert api.returncode == 0, api.stderr[-3000:]
    out = json.loads(api.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).is_relative_to(venv)
    assert out["shape"] == [3, 1, 28, 28] and 0 <= out["min"] <= out["max"] <= 1
    assert math.isfinite(out["elbo"])
    assert (work / out["run_dir"] / "metrics.json").is_file()


@pytest.mark.slow
def test_installed_help_and_shell_completion(installed):
    help_text = _run(installed, "genlab-sample", "--help")
    assert help_text.returncode == 0 and "task=<task>" in help_text.stdout
    script = _run(installed, "genlab-train", "-sc", "install=bash")
    assert script.returncode == 0
    assert "complete -o nospace -o default -F hydra_bash_completion genlab-train" in script.stdout
    line = "genlab-train model=v"
    venv, _, work, env = installed
    query = subprocess.run(
        [str(venv / "bin" / "genlab-train"), "-sc", "query=bash"],
        cwd=work,
        env={**env, "COMP_LINE": line, "COMP_POINT": str(len(line))},
        capture_output=True,
        text=True,
    )
    assert query.stdout.split() == ["model=vae", "model=vqvae"]


# -- optional features without their extra ---------------------------------------------------------
# Runs genlab-train's code with the named modules made unimportable (a meta-path finder that
# refuses them) and their distributions unknown to importlib.metadata (which libraries such as
# torchmetrics ask first), as in an environment without the extra.
BLOCKED_RUN = """
import importlib.abc, importlib.metadata as md, sys
blocked = sys.argv.pop(1).split(",")
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Refuse())
dists = {b.split(".")[-1].replace("_", "-").lower() for b in blocked}
from_name = md.Distribution.from_name.__func__
def hidden(cls, name):
    if name.replace("_", "-").lower() in dists:
        raise md.PackageNotFoundError(name)
    return from_name(cls, name)
md.Distribution.from_name = classmethod(hidden)
from genlab.commands import train
train()
"""
SLURM = "submitit,hydra_plugins.hydra_submitit_launcher"
OPTUNA = "optuna,hydra_plugins.hydra_optuna_sweeper"


@pytest.mark.parametrize(
    "blocked, argv, extra",
    [
        (SLURM, ["-m", "hydra/launcher=slurm", "model.beta=1,2"], "slurm"),
        (OPTUNA, ["-m", "sweep=optuna_vae"], "optuna"),
        # a sweep config of the user's own that picks the Optuna sweeper
        (OPTUNA, ["-m", "sweep=search", "hydra.searchpath=[file://{conf}]"], "optuna"),
        ("tensorboard", ["logger=[csv,tensorboard]"], "tensorboard"),
        ("torch_fidelity", ["eval.inception_weights={weights}"], "fid"),
    ],
)
def test_feature_without_its_extra_names_the_pip_install(tmp_path, blocked, argv, extra):
    conf = tmp_path / "my_conf"
    (conf / "sweep").mkdir(parents=True)
    (conf / "sweep" / "search.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\n"
    )
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"weights")
    argv = [a.format(conf=conf, weights=weights) for a in argv]
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, blocked, *argv, f"paths.output_root={tmp_path}/out"],
        cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(REPO / "src")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f'pip install "genlab[{extra}]"' in result.stderr
    assert result.stderr.count("genlab: error:") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_local_launcher_works_without_the_slurm_extra():
    code = BLOCKED_RUN.split("from genlab.commands")[0] + (
        "import hydra_plugins.genlab_sweep as plugin\n"
        "print(plugin.GenlabLocalParallelLauncher.__name__)\n"
        "plugin.GenlabSlurmLauncher()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, SLURM],
        env=_clean_env(PYTHONPATH=str(REPO / "src")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "GenlabLocalParallelLauncher"
    assert "GenlabError: hydra/launcher=slurm needs" in result.stderr
    assert 'pip install "genlab[slurm]"' in result.stderr


# -- the set-up command ----------------------------------------------------------------------------
def _readme_setup() -> str:
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    return block.group(1).splitlines()[0].split("#")[0].strip()


def test_ci_runs_the_readmes_setup_command():
    setup = _readme_setup()
    assert setup == "bash install.sh"
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert setup in lines
    assert not any("pip install" in line for line in lines if not line.startswith("#"))


@pytest.mark.slow
def test_setup_command_installs_an_editable_checkout(tmp_path):
    """The README's set-up, run for real with a fresh virtualenv's python: genlab is then this
    checkout's (editable), composing from its conf/, and its Hydra plugins are found."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = str(venv / "bin" / "python")
    # Build without fetching setuptools (the installed one is recent enough); pip's
    # PIP_NO_BUILD_ISOLATION=0 means --no-build-isolation.
    env = _clean_env(PYTHON=python, PIP_NO_BUILD_ISOLATION="0")
    setup = subprocess.run(
        ["bash", "-c", _readme_setup()], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert setup.returncode == 0, setup.stderr[-3000:]
    code = (
        "import genlab, genlab.composition as c; print(genlab.__file__); print(c.CONF_DIR);"
        "print(c.compose('train', ['model=vqvae']).model.name)"
    )
    result = subprocess.run(
        [python, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    module, conf, model = result.stdout.split()
    assert Path(module) == REPO / "src" / "genlab" / "__init__.py"
    assert Path(conf) == REPO / "conf" and model == "vqvae"


def test_core_install_trains_and_samples_without_any_extra(data_root, tmp_path):
    """Every extra's modules unimportable: a run trains (CSV logs, its test stage) and samples."""
    every_extra = ",".join([SLURM, OPTUNA, "sqlalchemy", "torch_fidelity", "tensorboard"])
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, every_extra, *FAST, f"hydra.run.dir={run_dir}"]
        + [f"paths.data_dir={data_root}", "model.latent_dim=4"],
        cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(REPO / "src")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the domain FID/KID/IS use torchmetrics' classes with genlab's classifier: no torch-fidelity
    assert math.isfinite(metrics["test/elbo"]) and math.isfinite(metrics["test/fid_domain"])
    sample = BLOCKED_RUN.replace("import train\ntrain()", "import sample\nsample()")
    drawn = subprocess.run(
        [sys.executable, "-c", sample, every_extra, f"run={run_dir}", "task=samples", "n=2"],
        cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(REPO / "src")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert (run_dir / "samples" / "samples.png").is_file()

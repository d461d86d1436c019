"""A model of one's own (docs/extending.md): examples/betatcvae, a beta-TCVAE genlab does not
ship, goes through every command as a user runs it (train.py, a sweep, sample.py, genlab.load,
the export) once its module is named; a run's own files never make genlab import a module; and
every built-in model's name is written only in its own folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import FAST, REPO

EXAMPLES = REPO / "examples"
PLUGIN = "plugins=[betatcvae]"
SEARCHPATH = f"hydra.searchpath=[file://{EXAMPLES / 'conf'}]"


def tiny(data_root) -> list[str]:
    return [
        PLUGIN,
        SEARCHPATH,
        "model=betatcvae",
        f"paths.data_dir={data_root}",
        "data=mnist",
        "model.mlp.hidden=[32]",
        "model.latent_dim=3",
        "model.iwae_k_val=0",
        "model.iwae_k_test=0",
        *FAST,
        "trainer.limit_train_batches=3",
        "eval.sample_quality=false",
    ]


def env(*paths: Path, **extra: str) -> dict[str, str]:
    """This process's environment with `paths` in front of PYTHONPATH (the user's modules)."""
    python_path = os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")])
    base = {k: v for k, v in os.environ.items() if k != "GENLAB_PLUGINS"}
    return {**base, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", **extra}


def python(*args: str, cwd: Path, environ: dict[str, str]):
    """`python <args>` as a user types it (REPO's scripts by name: train.py, sample.py)."""
    args = tuple(str(REPO / a) if a in ("train.py", "sample.py") else a for a in args)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory) -> Path:
    """One tiny trained beta-TCVAE run, through train.py."""
    out = tmp_path_factory.mktemp("tcvae") / "run"
    result = python(
        "train.py",
        *tiny(data_root),
        f"hydra.run.dir={out}",
        cwd=out.parent,
        environ=env(EXAMPLES),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_train_py_trains_the_example_with_its_own_metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/mi", "test/tc", "test/dim_kl", "test/elbo", "val/tc", "train/tc"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    saved = (run_dir / "config.yaml").read_text()
    assert "name: betatcvae" in saved and "_target_: betatcvae.model.BetaTCVAE" in saved
    assert "alpha: 1.0" in saved and "gamma: 1.0" in saved  # its spec's own keys and defaults


def test_evaluate_scores_the_examples_checkpoint(run_dir, data_root, tmp_path):
    out = tmp_path / "evaluated"
    result = python(
        "train.py",
        *tiny(data_root),
        f"evaluate={run_dir}",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        environ=env(EXAMPLES),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    scored = json.loads((out / "metrics.json").read_text())
    assert {"test/tc", "test/mi", "test/dim_kl"} <= set(scored)
    assert scored["test/recon"] == pytest.approx(trained["test/recon"], rel=0.05)


def test_sample_py_draws_from_the_example_once_named(run_dir, tmp_path):
    out = tmp_path / "pictures"
    args = (f"run={run_dir}", "task=samples", "n=4", f"out_dir={out}", "device=cpu")
    named = python("sample.py", *args, PLUGIN, cwd=tmp_path, environ=env(EXAMPLES))
    assert named.returncode == 0, named.stderr[-2000:]
    assert (out / "samples.png").stat().st_size > 0

    unnamed = python("sample.py", *args, cwd=tmp_path, environ=env(EXAMPLES))
    assert unnamed.returncode == 2
    assert "'betatcvae'" in unnamed.stderr and "plugins=[my_pkg.my_model]" in unnamed.stderr
    assert "GENLAB_PLUGINS" in unnamed.stderr and "Traceback" not in unnamed.stderr


LOAD_AND_EXPORT = """
import json, sys, torch, genlab
from genlab.export import export_run
run, out = sys.argv[1], sys.argv[2]
pipe = genlab.load(run)
export_run(run, out)
exported = genlab.load(out)
z = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
print(json.dumps({
    "kinds": [pipe.kind, exported.kind],
    "shape": list(pipe.sample(2, seed=1).shape),
    "same": torch.equal(pipe.decode(z), exported.decode(z)),
}))
"""


def test_genlab_load_and_export_need_the_plugin_too(run_dir, tmp_path):
    out = tmp_path / "export"
    named = env(EXAMPLES, GENLAB_PLUGINS="betatcvae")
    result = python("-c", LOAD_AND_EXPORT, str(run_dir), str(out), cwd=tmp_path, environ=named)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {"kinds": ["betatcvae"] * 2, "shape": [2, 1, 28, 28], "same": True}

    load = "import sys, genlab; genlab.load(sys.argv[1])"
    for path in (run_dir, out):  # without the plugin: refused, naming how to register it
        refused = python("-c", load, str(path), cwd=tmp_path, environ=env(EXAMPLES))
        assert refused.returncode == 1  # an uncaught GenlabError in a Python script
        assert "GenlabError" in refused.stderr and "'betatcvae'" in refused.stderr
        assert "GENLAB_PLUGINS" in refused.stderr


def test_a_bad_value_of_the_examples_own_keys_is_refused_by_name(data_root, tmp_path):
    for override, named in (
        ("model.gamma=-1", "model.gamma=-1. model.gamma must be a number >= 0"),
        ("model.reduction=mean", "needs model.reduction=sum"),  # its own cross-field rule
    ):
        result = python("train.py", *tiny(data_root), override, cwd=tmp_path, environ=env(EXAMPLES))
        assert result.returncode == 2, result.stderr[-2000:]
        assert named in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # refused before anything was written


def sweep_of_the_example(selection: list[str], tmp_path: Path) -> list[Path]:
    """A 2-job sweep over the example's beta, each job in its own process; its job dirs."""
    sweep_dir = tmp_path / "sweep"
    result = python(
        "train.py",
        "-m",
        *selection,
        "model.beta=1,4",
        "hydra/launcher=local_parallel",  # jobs as `python -m genlab.train <overrides>`
        "hydra.launcher.n_jobs=1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        environ=env(EXAMPLES),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [p.name for p in jobs] == ["0_beta=1", "1_beta=4"]
    return jobs


def test_a_sweep_of_the_example_runs_each_job_in_its_own_process(data_root, tmp_path):
    jobs = sweep_of_the_example(tiny(data_root), tmp_path)
    for job in jobs:
        assert "test/tc" in json.loads((job / "metrics.json").read_text())
        assert "name: betatcvae" in (job / "config.yaml").read_text()


def test_a_runs_files_never_import_a_module(run_dir, tmp_path):
    """A run dir whose config.yaml names `plugins: [evil]` and a `_target_` in that module: no
    command that loads it imports the module, with or without the model's plugin named."""
    sentinel = tmp_path / "imported"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "evil.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('imported')\nGENLAB_MODELS = ()\nclass Model: ...\n"
    )
    config = (run_dir / "config.yaml").read_text()
    assert "plugins:\n- betatcvae" in config
    forged, targeted = tmp_path / "forged", tmp_path / "targeted"
    for run, text in (
        (forged, config.replace("- betatcvae", "- evil")),
        (
            targeted,
            config.replace("- betatcvae", "- evil").replace(
                "betatcvae.model.BetaTCVAE", "evil.Model"
            ),
        ),
    ):
        (run / "checkpoints").mkdir(parents=True)
        for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
            (run / "checkpoints" / ckpt.name).write_bytes(ckpt.read_bytes())
        (run / "config.yaml").write_text(text)
    args = ("task=samples", "n=2", f"out_dir={tmp_path / 'out'}", "device=cpu")
    for run, plugin, refusal in (
        (forged, (), "plugins=[my_pkg.my_model]"),  # the model unknown: how to register it
        (targeted, (PLUGIN,), "model._target_"),  # known, but the file names another class
    ):
        result = python(
            "sample.py", f"run={run}", *args, *plugin, cwd=tmp_path, environ=env(EXAMPLES, modules)
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert refusal in result.stderr
    result = python(
        "-c",
        "import sys, genlab; genlab.load(sys.argv[1])",
        str(forged),
        cwd=tmp_path,
        environ=env(EXAMPLES, modules),
    )
    assert result.returncode == 1 and "GENLAB_PLUGINS" in result.stderr
    assert not sentinel.exists()


def test_the_minibatch_weighted_parts_add_up_to_the_sampled_kl():
    """mi + tc + dim_kl = log q(z|x) - log p(z) for each image (Chen et al. 2018, eq. 2)."""
    import torch
    from torch.distributions import Normal

    sys.path.insert(0, str(EXAMPLES))
    try:
        from betatcvae.model import BetaTCVAE
    finally:
        sys.path.remove(str(EXAMPLES))
    model = BetaTCVAE(latent_dim=3, mlp={"hidden": [16]}, dataset_size=1000)
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g) * 0.3
    z = mu + torch.randn(8, 3, generator=g) * (0.5 * logvar).exp()
    mi, tc, dim_kl = model.decomposed_kl(z, mu, logvar)
    std = (0.5 * logvar).exp()
    sampled = Normal(mu, std).log_prob(z).sum(1) - Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(mi + tc + dim_kl, sampled)
    assert mi.shape == tc.shape == dim_kl.shape == (8,)


def test_plugin_modules_are_checked_before_use():
    from genlab import GenlabError
    from genlab.models.catalog import load_plugins, plugins_in

    assert plugins_in(["model=vae", "plugins=[a.b, c]", "+plugins='d'"]) == ["a.b", "c", "d"]
    with pytest.raises(GenlabError, match="cannot be imported"):
        load_plugins(["no_such_module_here"])
    with pytest.raises(GenlabError, match="lists no models: it needs GENLAB_MODELS"):
        load_plugins(["json"])
    with pytest.raises(GenlabError, match="is not a module name"):
        load_plugins(["os; rm"])


# The ancestral sampler of Ho et al. is called ddpm too: the sampler registry and the code that
# picks a sampler by name may write it (they name a sampler, not model=ddpm).
SAMPLER_FILES = ("diffusion/", "sampler_rules.py", "sample/diffusion.py", "sample/options.py")


def test_each_model_name_is_written_only_in_its_own_folder():
    from genlab.models.catalog import BUILTIN, MODEL_SPECS

    src = REPO / "src"
    names = [module.split(".")[2] for module in BUILTIN]
    assert names == [n for n in MODEL_SPECS if n in names]  # the registry is the folder list
    assert sorted(names) == sorted(
        p.parent.name for p in (src / "genlab" / "models").glob("*/spec.py")
    )
    for name in names:
        pattern = re.compile(rf"""["']{name}["']""")
        found = [
            f"{path.relative_to(src)}:{i}"
            for path in src.rglob("*.py")
            for i, line in enumerate(path.read_text().splitlines(), 1)
            if pattern.search(line)
        ]
        own = f"genlab/models/{name}/"
        elsewhere = [f for f in found if not f.startswith(own)]
        if name == "ddpm":
            elsewhere = [
                f
                for f in elsewhere
                if not f.startswith(tuple(f"genlab/{s}" for s in SAMPLER_FILES))
            ]
        assert found and not elsewhere, (name, elsewhere)


def test_an_entry_point_registers_the_model_and_nothing_else_does(tmp_path):
    """An installed package's entry point (group genlab.models) is enough for model=betatcvae;
    without any registration a config folder whose model config names no module is refused
    with the ways to register it. Both before torch is imported (--cfg job)."""
    bare = tmp_path / "conf"  # examples/conf without the line naming the module
    (bare / "model").mkdir(parents=True)
    text = (EXAMPLES / "conf" / "model" / "betatcvae.yaml").read_text()
    assert "- /_betatcvae_plugin_@_global_" in text
    (bare / "model" / "betatcvae.yaml").write_text(
        "\n".join(line for line in text.splitlines() if "_betatcvae_plugin_" not in line)
    )
    site = tmp_path / "site"
    info = site / "my_models-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[genlab.models]\nbetatcvae = betatcvae\n")
    args = ("train.py", f"hydra.searchpath=[file://{bare}]", "model=betatcvae")
    args += ("--cfg", "job", "--package", "model")
    installed = python(*args, cwd=tmp_path, environ=env(EXAMPLES, site))
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert "name: betatcvae" in installed.stdout and "gamma: 1.0" in installed.stdout

    unregistered = python(*args, cwd=tmp_path, environ=env(EXAMPLES))
    assert unregistered.returncode == 2
    assert "genlab knows no model 'betatcvae'" in unregistered.stderr
    assert "plugins=[my_pkg.my_model]" in unregistered.stderr

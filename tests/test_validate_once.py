"""A run's config is composed once and validated once per entry point, by one rules module
(issue 28, "The single-run path stays single"): `genlab.run_rules.validate_run_config` is
counted through the real entry points (train.py, `python -m genlab.train`, a sweep,
genlab.train, evaluate=, genlab.training.run; sample.py and genlab.load for a trained run's
config), every caller of it is one of the entry points docs/architecture.md names, only it calls
a model spec's `check`, and bad input is still refused with exit code 2 and the same message.

Each count is keyed by the module that called the rules, so a second check on the way (the
precheck and then the training flow) shows as two entries. Compositions are counted where
every one of them happens, Hydra's config loader (its compose API and its main alike).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from fixtures import FAST, REPO

import genlab
from genlab import GenlabError

SRC = REPO / "src"
TINY = [
    "model=vae",
    "model.mlp.hidden=[16]",
    "model.latent_dim=2",
    *FAST,
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=0",
    "eval.sample_quality=false",
    "test=false",
    "save_images=false",
    "previews.keep=0",
]
# The message of a bad value, as train.py has always printed it (tests/test_bad_inputs.py has
# the whole table).
BAD = "model.latent_dim=0"
MESSAGE = (
    "Invalid config: model.latent_dim=0. model.latent_dim must be an integer >= 1. "
    "e.g. model.latent_dim=16."
)


# -- counting -------------------------------------------------------------------------------------
@pytest.fixture
def validations(monkeypatch) -> Counter:
    """Calls of validate_run_config in this process from now on, by calling module: the one
    function is replaced wherever a genlab module holds it."""
    # The modules that bind it at import, imported first: their binding is patched (and put
    # back afterwards), not taken from the patched run_rules during a test.
    import genlab.runs
    import genlab.training  # noqa: F401
    from genlab import run_rules

    original, calls = run_rules.validate_run_config, Counter()

    def counting(cfg, *args, **kwargs):
        calls[sys._getframe(1).f_globals["__name__"]] += 1
        return original(cfg, *args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("genlab") and getattr(module, "validate_run_config", None) is original:
            monkeypatch.setattr(module, "validate_run_config", counting)
    return calls


@pytest.fixture
def compositions(monkeypatch) -> list:
    """The configs composed in this process from now on (by config name): every composition,
    Hydra's main's and its compose API's, is a call of its config loader's load_configuration."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    original, names = ConfigLoaderImpl.load_configuration, []

    def counting(self, config_name, *args, **kwargs):
        names.append(config_name)
        return original(self, config_name, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counting)
    return names


# A command run as a user runs it (`train.py ...` or `-m genlab.train ...`), counting the rules'
# calls in that process and the configs it composes; they are written to $COUNTS at exit.
DRIVER = """
import atexit, json, os, runpy, sys
from collections import Counter
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from genlab import run_rules
original, calls = run_rules.validate_run_config, Counter()
def counting(cfg, *args, **kwargs):
    calls[sys._getframe(1).f_globals["__name__"]] += 1
    return original(cfg, *args, **kwargs)
run_rules.validate_run_config = counting
load, composed = ConfigLoaderImpl.load_configuration, []
def loading(self, config_name, *args, **kwargs):
    composed.append(config_name)
    return load(self, config_name, *args, **kwargs)
ConfigLoaderImpl.load_configuration = loading
def dump():
    with open(os.environ["COUNTS"], "w") as f:
        json.dump({"validated": calls, "composed": composed}, f)
atexit.register(dump)
target, args = sys.argv[1], sys.argv[2:]
if target == "-m":
    sys.argv = ["genlab.train", *args]
    runpy.run_module("genlab.train", run_name="__main__", alter_sys=True)
else:
    sys.argv = [target, *args]
    runpy.run_path(target, run_name="__main__")
"""


def command(
    target: str, args: list[str], tmp_path
) -> tuple[subprocess.CompletedProcess, dict, list]:
    """The command's result, validate_run_config's calls by calling module, the configs it
    composed."""
    counts = tmp_path / f"counts-{len(list(tmp_path.glob('counts-*')))}.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "GENLAB_OUTPUT_DIR": str(tmp_path / "outputs"),
        "COUNTS": str(counts),
    }
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, target, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert counts.exists(), result.stdout[-2000:] + result.stderr[-3000:]
    counted = json.loads(counts.read_text())
    return result, counted["validated"], counted["composed"]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """`python train.py <TINY>` (two training steps): its output, the rules' calls and the
    configs composed."""
    tmp = tmp_path_factory.mktemp("train_py")
    args = [f"paths.data_dir={data_root}", f"hydra.run.dir={tmp / 'run'}", *TINY]
    result, counts, composed = command(str(REPO / "train.py"), args, tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run", counts, composed


# -- per entry point ------------------------------------------------------------------------------
def test_train_py_composes_and_validates_once(trained):
    run_dir, counts, composed = trained
    assert counts == {"genlab.cli": 1}
    assert composed == ["train"]
    assert (run_dir / "metrics.json").exists() and (run_dir / "checkpoints").is_dir()
    # The run Hydra's main would have run: its records of the command line, its log file.
    hydra = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert f"- hydra.run.dir={run_dir}\n    - hydra.mode=RUN\n" in hydra
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert overrides.splitlines()[1:] == [f"- {o}" for o in TINY]  # after paths.data_dir
    assert "final metrics" in (run_dir / "train.log").read_text()


def test_python_m_genlab_train_with_evaluate_validates_once(trained, data_root, tmp_path):
    run_dir, *_ = trained
    out = tmp_path / "evaluated"
    args = [f"paths.data_dir={data_root}", f"hydra.run.dir={out}", *TINY, f"evaluate={run_dir}"]
    result, counts, composed = command("-m", args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert counts == {"genlab.cli": 1}
    assert composed == ["train"]
    assert "val/loss" in json.loads((out / "metrics.json").read_text())


def test_genlab_train_composes_and_validates_once(validations, compositions, data_root, tmp_path):
    run = genlab.train([f"paths.data_dir={data_root}", f"hydra.run.dir={tmp_path / 'run'}", *TINY])
    assert validations == {"genlab.cli": 1}
    assert compositions == ["train"]
    assert run.metrics and (run.run_dir / "metrics.json").exists()


def test_genlab_train_with_evaluate_validates_once(
    trained, validations, compositions, data_root, tmp_path
):
    run_dir, *_ = trained
    out = tmp_path / "evaluated"
    overrides = [f"paths.data_dir={data_root}", f"hydra.run.dir={out}", *TINY]
    evaluated = genlab.train([*overrides, f"evaluate={run_dir}"])
    assert validations == {"genlab.cli": 1}
    assert compositions == ["train"]
    assert "val/loss" in evaluated.metrics


def test_sample_py_checks_the_runs_config_once(trained, tmp_path):
    run_dir, *_ = trained
    args = [f"run={run_dir}", "task=samples", "n=4", f"out_dir={tmp_path / 'samples'}"]
    result, counts, composed = command(str(REPO / "sample.py"), args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert counts == {"genlab.runs": 1}
    assert composed == ["sample"]  # the run's own config.yaml is read, not composed
    assert list((tmp_path / "samples").glob("*.png"))


def test_genlab_load_checks_the_runs_config_once(trained, validations, compositions):
    run_dir, *_ = trained
    pipeline = genlab.load(run_dir)
    assert validations == {"genlab.runs": 1}
    assert compositions == []
    assert tuple(pipeline.sample(2).shape) == (2, 1, 28, 28)


def test_the_training_flow_called_directly_validates_its_config(validations, compose):
    """A library caller's genlab.training.run(cfg) checks the config itself: once."""
    from genlab.training import run

    with pytest.raises(GenlabError) as refused:
        run(compose(*TINY, BAD))
    assert str(refused.value) == MESSAGE
    assert validations == {"genlab.training": 1}


def test_a_sweep_checks_each_job_before_it_starts_and_each_job_once(data_root, tmp_path):
    """The sweep's precheck checks each swept value's config (refusing the sweep before any job
    runs); each job then checks its own config once (a sweeper may choose values the precheck
    never composed), not a third time."""
    args = ["-m", f"paths.data_dir={data_root}", *TINY, "model.latent_dim=2,3"]
    args.append("hydra.callbacks.genlab_sweep.report=false")
    result, counts, _ = command(str(REPO / "train.py"), args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert counts == {"genlab.sweep.precheck": 2, "genlab.training": 2}
    statuses = sorted((tmp_path / "outputs").rglob("status.json"))
    assert [json.loads(p.read_text())["status"] for p in statuses] == ["completed"] * 2


# -- bad input: the same refusal ------------------------------------------------------------------
def test_bad_input_is_refused_by_train_py_with_exit_2_and_the_message(
    validations, data_root, tmp_path, capsys
):
    """In-process, the way train.py runs: genlab.cli.start refuses where it composed the run's
    config, before the run's dir, Hydra's main or the task."""
    from genlab.cli import start

    def never(*args):
        raise AssertionError("the run started: a bad value got through")

    args = [f"paths.data_dir={data_root}", f"hydra.run.dir={tmp_path / 'run'}", *TINY, BAD]
    with pytest.raises(SystemExit) as exited:
        start(never, never, args, "train")
    assert exited.value.code == 2
    assert MESSAGE in capsys.readouterr().err
    assert validations == {"genlab.cli": 1}
    assert not (tmp_path / "run").exists()


def test_bad_input_is_refused_by_genlab_train_with_the_message(validations, data_root, tmp_path):
    with pytest.raises(GenlabError) as refused:
        genlab.train([f"paths.data_dir={data_root}", f"hydra.run.dir={tmp_path / 'r'}", *TINY, BAD])
    assert str(refused.value) == MESSAGE
    assert validations == {"genlab.cli": 1}
    assert not (tmp_path / "r").exists()


def test_without_a_precheck_the_run_validates_once_and_refuses_the_same(data_root, tmp_path):
    """Hydra's own flags (here --config-name) leave the run to Hydra's main, which composes it
    itself: the run checks its config instead, once, with the same message and exit code.
    (--config-dir becomes hydra.searchpath, which genlab composes: genlab.cli.single_run.)"""
    args = ["--config-name", "train", f"paths.data_dir={data_root}", *TINY, BAD]
    args.append(f"hydra.run.dir={tmp_path / 'run'}")
    result, counts, _ = command(str(REPO / "train.py"), args, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert MESSAGE in result.stderr and "Traceback" not in result.stderr
    assert counts == {"genlab.training": 1}
    assert not (tmp_path / "run").exists()


# -- one rules module -----------------------------------------------------------------------------
def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted((SRC / "genlab").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = ast.parse(
            path.read_text()
        )
    return found


def _calls(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            yield name, node


def test_only_the_rules_module_calls_a_model_specs_check():
    """A spec's `check` (its own cross-field rules, kept in the model's folder) is run by
    genlab.run_rules.validate_run_config alone; a spec may extend its parent's (`super()`)."""
    callers = Counter()
    for module, tree in _modules().items():
        for name, node in _calls(tree):
            if name != "check" or not isinstance(node.func, ast.Attribute):
                continue
            receiver = node.func.value
            is_super = (
                isinstance(receiver, ast.Call) and getattr(receiver.func, "id", "") == "super"
            )
            if not is_super:
                callers[module] += 1
    assert callers == {"genlab.run_rules": 1}


def test_the_callers_of_the_rules_are_the_entry_points_the_docs_name():
    """Each call of validate_run_config is one entry point's check, and docs/architecture.md's
    "Where a config is validated" names each module that makes one."""
    callers = Counter()
    for module, tree in _modules().items():
        callers[module] += sum(name == "validate_run_config" for name, _ in _calls(tree))
    callers = +callers
    assert callers == {
        "genlab.cli": 1,  # a single run's precheck (train.py, python -m genlab.train, genlab.train)
        "genlab.sweep.precheck": 1,  # each swept config, before a sweep starts
        "genlab.training": 1,  # a sweep's job, a Slurm job, a library caller: unless validated
        "genlab.runs": 1,  # a trained run's config.yaml as it is read (sample.py, load, export)
    }
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text[text.index("## Where a config is validated") :]
    section = section[: section.index("\n## ", 1)]
    for module in callers:
        short = module.removeprefix("genlab.")
        assert f"`{short}." in section or f"`{module}." in section, module


def test_a_config_dir_run_is_composed_and_refused_once(data_root, tmp_path):
    """--config-dir (as hydra.searchpath) is composed by genlab: a bad value is refused there,
    once, and the run never starts."""
    args = ["--config-dir", str(REPO / "conf"), f"paths.data_dir={data_root}", *TINY, BAD]
    args.append(f"hydra.run.dir={tmp_path / 'run'}")
    result, counts, composed = command(str(REPO / "train.py"), args, tmp_path)
    assert result.returncode == 2 and MESSAGE in result.stderr, result.stderr[-3000:]
    assert counts == {"genlab.cli": 1}
    assert composed == ["train"]
    assert not (tmp_path / "run").exists()


def test_a_primary_config_of_ones_own_folder_trains_validated_once(data_root, tmp_path):
    """`--config-dir my_conf --config-name my_train`: Hydra's main runs it (it finds a primary
    config in its own search path only, where --config-dir stays for it), and the run checks
    its config once."""
    conf = tmp_path / "my_conf"
    conf.mkdir()
    (conf / "my_train.yaml").write_text(
        "defaults:\n  - train\n  - _self_\nmodel:\n  latent_dim: 3\n"
    )
    run_dir = tmp_path / "run"
    args = ["--config-dir", str(conf), "--config-name", "my_train", f"paths.data_dir={data_root}"]
    args += [a for a in TINY if not a.startswith("model.latent_dim")]
    result, counts, _ = command(
        str(REPO / "train.py"), [*args, f"hydra.run.dir={run_dir}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert counts == {"genlab.training": 1}
    assert "latent_dim: 3" in (run_dir / "config.yaml").read_text()


def test_a_sweep_on_a_primary_config_of_ones_own_folder_gives_each_job_it(data_root, tmp_path):
    """The same with -m on genlab's local_parallel launcher: each job runs in a process of its
    own (`python -m genlab.train`), which is told the folder and the primary config
    (genlab.sweep.own_process), so each job trains the user's config, not genlab's train.yaml."""
    conf = tmp_path / "my_conf"
    conf.mkdir()
    (conf / "my_train.yaml").write_text(
        "defaults:\n  - train\n  - _self_\nmodel:\n  latent_dim: 3\n"
    )
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "--config-dir", str(conf), "--config-name", "my_train"]
    args += [f"paths.data_dir={data_root}", *[a for a in TINY if not a.startswith("model.latent")]]
    args += ["model.beta=1,2", "hydra/launcher=local_parallel", f"hydra.sweep.dir={sweep_dir}"]
    args.append("hydra.callbacks.genlab_sweep.report=false")
    result, counts, _ = command(str(REPO / "train.py"), args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    configs = sorted(sweep_dir.glob("*/config.yaml"))
    assert len(configs) == 2
    for config in configs:
        text = config.read_text()
        assert "latent_dim: 3" in text, text
    assert sorted("beta: 1" in c.read_text() for c in configs) == [False, True]

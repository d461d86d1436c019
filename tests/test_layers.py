"""Floors that only look down (docs/architecture.md, "Layers"): every genlab import, at module
level or inside a function, goes to the importer's floor or one below it; the whole import graph
has no cycle; and a plain single run imports nothing of the sweep machinery."""

import ast
import os
import re
import subprocess
import sys

import pytest
from fixtures import FAST, REPO, assert_no_import_cycle
from module_table import import_targets, owner, package_of, sources

SRC = REPO / "src"
DOC = REPO / "docs" / "architecture.md"
ROOT = "genlab"  # its load/train import genlab.api when called: the one import upwards


def modules() -> dict[str, ast.Module]:
    """Every module of genlab and of genlab's Hydra plugins, by dotted name."""
    return {name: ast.parse(path.read_text()) for name, path in sources().items()}


def imports_of(name: str, tree: ast.Module, known: set[str]) -> dict[str, int]:
    """The genlab modules `name` imports anywhere (module level and inside functions alike),
    each with the line of its first import."""
    found: dict[str, int] = {}
    package = package_of(name, known)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in import_targets(package, node, known):
                if target != name:
                    found.setdefault(target, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, tree, known) for name, tree in found.items()}


def floors() -> dict[str, tuple[int, str]]:
    """docs/architecture.md's floor table: pattern -> (floor number, floor name)."""
    text = DOC.read_text()
    section = text[text.index("## Layers: who may import whom") :]
    section = section[: section.index("\n## ", 1)]
    table = {}
    for row in re.findall(r"^\| (\d+) ([^|]+?) \| ([^|]+) \|", section, flags=re.M):
        number, floor, cell = int(row[0]), row[1], row[2]
        for pattern in re.findall(r"`([^`]+)`", cell):
            assert pattern not in table, f"{pattern} is on two floors"
            table[pattern] = (number, floor)
    return table


def floor_of(module: str, table: dict[str, tuple[int, str]]) -> tuple[int, str] | None:
    """The floor of the most specific table entry naming `module` (`x` over `x.*` over `y.*`)."""
    short = module if module.startswith("hydra_plugins") else module.removeprefix("genlab.")
    best = None
    for pattern, floor in table.items():
        exact = pattern == short
        package = pattern.endswith(".*") and (
            short == pattern[:-2] or short.startswith(pattern[:-1])
        )
        if exact or package:
            rank = (exact, len(pattern))
            if best is None or rank > best[0]:
                best = (rank, floor)
    return best[1] if best else None


def test_the_floor_table_names_every_module_and_only_modules():
    table, names = floors(), set(modules())
    missing = [m for m in sorted(names) if floor_of(m, table) is None]
    assert not missing, f"modules on no floor of docs/architecture.md: {missing}"
    shorts = {m if m.startswith("hydra_plugins") else m.removeprefix("genlab.") for m in names}
    shorts |= {"genlab"}
    unknown = [
        p
        for p in table
        if p not in shorts and not any(s.startswith(p[:-1]) or s == p[:-2] for s in shorts)
    ]
    assert not unknown, f"floor table entries that name no module: {unknown}"


def test_every_import_looks_down():
    table = floors()
    upward = []
    for name, targets in graph().items():
        if name == ROOT:
            continue  # genlab.load / genlab.train: the documented exception
        here = floor_of(name, table)
        for target, line in targets.items():
            there = floor_of(target, table)
            if there[0] > here[0]:
                upward.append(f"{name}:{line} ({here[1]}) imports {target} ({there[1]})")
    assert not upward, "imports of a higher floor:\n" + "\n".join(upward)


def test_the_whole_import_graph_has_no_cycle():
    # Module level and inside functions alike; a package's __init__ importing its submodules
    # counts (importing the package runs it). The root package's own lazy load/train are left
    # out: every module imports GenlabError from it.
    edges = {name: sorted(targets) for name, targets in graph().items() if name != ROOT}
    edges[ROOT] = []
    assert_no_import_cycle(edges)


def test_the_checker_sees_imports_inside_functions():
    """The walk finds a lazy import (and a relative one), not only the module-level ones."""
    source = (
        "from genlab import GenlabError\n"
        "def f():\n"
        "    from genlab.models import MODEL_CLASSES\n"
        "    import genlab.sweep.job\n"
        "    from . import keys\n"
    )
    known = {"genlab", "genlab.models", "genlab.sweep", "genlab.sweep.job", "genlab.sweep.keys"}
    found = imports_of("genlab.sweep.report", ast.parse(source), known)
    assert found == {"genlab": 1, "genlab.models": 3, "genlab.sweep.job": 4, "genlab.sweep.keys": 5}
    table = floors()
    assert floor_of("genlab.sample.options", table)[1] == "ground"
    assert floor_of("genlab.sample.dispatch", table)[1] == "flows"
    assert floor_of("genlab.sweep.keys", table)[0] < floor_of("genlab.sweep.job", table)[0]


# -- the single-run path ---------------------------------------------------------------------------
# Runs the command as train.py does and prints, at exit, the modules the process imported.
DRIVER = """
import atexit, json, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules))))
sys.argv = ["train.py", *sys.argv[1:]]
from genlab.commands import train
train()
"""


def _imported(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("MODULES ")), None)
    assert line is not None, result.stdout[-2000:] + result.stderr[-3000:]
    import json

    return result, json.loads(line.removeprefix("MODULES "))


SWEEP_ONLY = ("genlab.sweep", "submitit", "optuna")


@pytest.mark.parametrize("show", [False, True], ids=["train", "cfg-job"])
def test_a_single_run_imports_nothing_of_the_sweep(data_root, tmp_path, show):
    args = [
        "model=vae",
        f"paths.data_dir={data_root}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *FAST,
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "eval.sample_quality=false",
        "model.iwae_k_val=0",
        "model.iwae_k_test=0",
    ]
    result, imported = _imported([*args, "--cfg", "job"] if show else args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    if not show:  # it trained: the path ran to its end
        assert (tmp_path / "run" / "metrics.json").is_file()
        assert "genlab.training" in imported and "lightning" in imported
    sweep = [m for m in imported if m.startswith(SWEEP_ONLY)]
    assert not sweep, f"a single run imported {sweep}"


def test_a_multirun_still_imports_the_sweep(tmp_path):
    """The check above can fail: the same driver on a (refused) multirun imports the sweep's
    precheck."""
    result, imported = _imported(["-m", "model.beta=1,2", "model.betta=3"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "genlab.sweep.precheck" in imported


def test_no_private_name_is_imported_from_another_module():
    """A name with a leading underscore is its module's own: what others use is public there."""
    found = modules()
    known = set(found)
    crossing = []
    for name, tree in found.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and owner(node.module or "", known):
                crossing += [
                    f"{name}:{node.lineno} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not crossing, "\n".join(crossing)


# The floors whose table row says torch is imported only inside their functions (and the
# configs and runs below them): importing them pulls in neither torch nor Lightning.
TORCH_INSIDE = [
    "genlab.registry",
    "genlab.run_rules",
    "genlab.runs",
    "genlab.builders",
    "genlab.training",
    "genlab.evaluate",
    "genlab.sample",
    "genlab.pipeline",
    "genlab.export",
    "genlab.cli",
    "genlab.api",
    "genlab.commands",
]


def test_flows_and_entry_points_import_no_torch_at_module_level():
    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_INSIDE!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# -- genlab.train: the function, and the command ---------------------------------------------------
def test_genlab_train_stays_the_function_and_the_module_is_only_the_command():
    code = (
        "import genlab, inspect\n"
        "before = genlab.train\n"
        "try:\n"
        "    import genlab.train\n"
        "except ImportError as err:\n"
        "    print('refused:', err)\n"
        "from genlab import train\n"
        "print(inspect.isfunction(genlab.train), genlab.train is before is train)\n"
        "print(list(inspect.signature(genlab.train).parameters))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    refused, same, params = result.stdout.strip().splitlines()
    assert refused.startswith("refused: genlab.train is the command `python -m genlab.train`")
    assert same == "True True" and params == "['overrides']"
    command = subprocess.run(
        [sys.executable, "-m", "genlab.train", "--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert command.returncode == 0 and command.stdout.startswith("genlab "), command.stderr

"""benchmarks/gpu_check.py (issue 17), checked here without a GPU: its dry run goes through every
stage on CPU at tiny sizes, its stage runner records failures and overruns and goes on, and
benchmarks/make_wheels.py's package list and size check hold (no network needed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

STAGES = [
    "install",
    "data",
    "cuda_tests",
    "train_runs",
    "flops",
    "unet_training",
    "unet_sampling",
    "latent_throughput",
]


def numbers(tree):
    """Every number in a JSON tree."""
    if isinstance(tree, dict):
        for v in tree.values():
            yield from numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from numbers(v)
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield tree


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run"]
        + ["--out-dir", str(out), "--wheels", str(out / "no-wheels")],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return json.loads((out / "benchmarks-gpu.json").read_text()), (
        out / "benchmarks-gpu.md"
    ).read_text()


def test_dry_run_goes_through_every_stage(dry_run):
    results, report = dry_run
    assert results["dry_run"] and results["env"]["device"] == "cpu"
    assert [s["stage"] for s in results["stages"]] == STAGES
    assert all(s["status"] == "ok" for s in results["stages"]), results["stages"]
    install = results["stages"][0]
    assert install["note"].startswith("skipped: no wheel folder")
    for name in STAGES:
        assert f"| {name} | ok |" in report
    # every model trained through train.py, each precision of the dry run at least once
    runs = results["train_runs"]
    assert sorted(r["model"] for r in runs) == ["ae", "cvae", "ddpm", "vae", "vqvae"]
    assert {r["precision"] for r in runs} == {"32-true", "bf16-mixed"}
    assert all(r["exit_code"] == 0 and r["checkpoint_bytes"] > 0 for r in runs)
    assert all(math.isfinite(v) for r in runs for v in r["metrics"].values())
    assert results["cuda_tests"]["counts"]["skipped"] >= 1  # collected by the marker, no CUDA


def test_dry_run_figures_are_finite_and_positive(dry_run):
    results, _ = dry_run
    configs = [r["config"] for r in results["unet_training"]]
    assert configs == ["fp32", "bf16", "bf16 + compile", "bf16 + compile + channels_last"]
    for section in ("unet_training", "unet_sampling", "latent_throughput", "flops"):
        values = list(numbers(results[section]))
        assert values and all(math.isfinite(v) and v > 0 for v in values), section
    for row in results["unet_training"] + results["latent_throughput"]:
        assert 0 < row["utilisation"]["mfu"]["genlab"] < 1
    sampling = results["unet_sampling"]
    assert sampling["ancestral_seconds_extrapolated"] == pytest.approx(
        sampling["ancestral_subset_seconds"] * 1000 / sampling["ancestral_subset_steps"]
    )


def test_step_flops_match_an_independent_estimate(dry_run):
    """A training step costs about three forwards (backward: gradients of inputs and of
    weights, one forward each), counted here on a separately built model."""
    import torch
    from loops import build_model
    from torch.utils.flop_counter import FlopCounterMode

    results, _ = dry_run
    counted = results["flops"]["ddpm_tiny@2"]
    model = build_model("ddpm_tiny")
    x = torch.rand(2, *model.image_shape) * 2 - 1
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model.net(x, torch.zeros(2, dtype=torch.long))
    estimate = 3 * forward.get_total_flops()
    assert 0.75 < counted["flops_per_step"] / estimate < 1.25
    assert counted["parameters"] == sum(p.numel() for p in model.parameters())


def test_report_marks_the_targets(dry_run):
    results, report = dry_run
    assert "## Targets" in report and "**Dry run**" in report
    assert report.splitlines()[0].startswith("# DRY RUN, not a measurement")
    targets = {t["target"]: t for t in results["targets"]}
    speed = next(t for name, t in targets.items() if ">= 60 steps/s" in name)
    value = float(speed["value"].split()[0])
    assert speed["status"].startswith("met" if value >= 60 else "missed")
    assert ("below the 30 floor" in speed["status"]) == (value < 30)
    assert any("DDIM-50 >= 18x" in name for name in targets)
    assert targets["every train.py run exits 0 with a checkpoint and finite metrics"][
        "status"
    ].startswith("met")
    for t in results["targets"]:
        assert f"| {t['target']} | {t['value']} | {t['status']} |" in report


def test_a_failing_or_overrunning_stage_is_recorded_and_the_next_runs(tmp_path):
    import gpu_check

    ctx = gpu_check.Context(
        gpu_check.settings(True), tmp_path, None, tmp_path / "site", tmp_path / "data", {}
    )
    ctx.cfg.budgets.update({"slow": 3.5, "broken": 5.0, "fine": 5.0})

    def slow(ctx):
        time.sleep(30)

    def broken(ctx):
        raise ValueError("the broken stage's own message")

    deadline = time.monotonic() + 60
    start = time.monotonic()
    over = gpu_check.run_stage("slow", slow, ctx, deadline)
    assert over["status"] == "skipped: over budget" and time.monotonic() - start < 5
    failed = gpu_check.run_stage("broken", broken, ctx, deadline)
    assert failed["status"] == "failed" and "the broken stage's own message" in failed["error"]
    assert gpu_check.run_stage("fine", lambda ctx: "done", ctx, deadline)["note"] == "done"
    spent = gpu_check.run_stage("fine", lambda ctx: "done", ctx, time.monotonic() + 1)
    assert spent["status"] == "skipped: over budget (the total was spent)"


def test_a_dry_run_report_never_defaults_to_docs(tmp_path):
    import gpu_check

    dry = gpu_check.report_folder(None, dry_run=True)
    assert dry.is_dir() and not dry.resolve().is_relative_to(REPO.resolve())
    assert not any(dry.iterdir())  # a new folder, nobody's files in it
    assert gpu_check.report_folder(None, dry_run=False) == REPO / "docs"
    assert gpu_check.report_folder(str(tmp_path), dry_run=True) == tmp_path


def test_budgets_fit_the_total_and_a_rerun_completes_the_earlier_report():
    import gpu_check

    assert sum(gpu_check.BUDGETS.values()) <= gpu_check.TOTAL_BUDGET_S
    previous = {
        "argv": "--wheels wheels",
        "stages": [
            {"stage": "install", "status": "ok"},
            {"stage": "train_runs", "status": "ok", "note": "10 runs"},
            {"stage": "unet_training", "status": "skipped: over budget"},
        ],
        "train_runs": [{"model": "vae", "precision": "bf16-mixed", "exit_code": 0}],
        "unet_training": [{"config": "fp32", "steps_per_s": {"genlab": 16.0}}],
    }
    rerun = [
        {"stage": "install", "status": "ok", "note": "again"},
        {"stage": "unet_training", "status": "ok"},
    ]
    results = {"unet_training": [{"config": "bf16", "steps_per_s": {"genlab": 30.0}}]}
    merged = gpu_check.take_previous(previous, rerun, results)
    assert [r["stage"] for r in merged] == ["install", "train_runs", "unet_training"]
    assert merged[0]["note"] == "again" and merged[2]["status"] == "ok"  # the rerun's own
    assert merged[1]["note"].startswith("from the previous run")
    assert results["train_runs"] == previous["train_runs"]
    assert [r["config"] for r in results["unet_training"]] == ["fp32", "bf16"]
    assert results["combined_with"] == "--wheels wheels"


def test_pytest_closing_line_is_read():
    from gpu_stages import pytest_counts

    out = "....\n1 failed, 2 passed, 1 skipped, 65 deselected in 3.10s\n"
    assert pytest_counts(out) == {"failed": 1, "passed": 2, "skipped": 1, "deselected": 65}


def test_make_wheels_package_list_and_size_check(tmp_path):
    import gpu_check
    import make_wheels as mw

    cmd = mw.download_command(tmp_path)
    assert "--only-binary=:all:" in cmd and "--no-deps" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert "manylinux2014_x86_64" in cmd and "hydra-core==1.3.8" in cmd
    assert not any(a.startswith("antlr4") for a in cmd)  # sdist only: built, not downloaded
    assert mw.PACKAGES["antlr4-python3-runtime"] == "4.9.3"  # what hydra-core 1.3 pins
    # every module gpu_check may find missing has a wheel to come from
    assert set(mw.MODULES.values()) <= {*mw.PACKAGES, "genlab"}
    assert gpu_check.wheel_requirements(["hydra", "genlab"]) == ["genlab", "hydra-core==1.3.8"]
    for name in ("hydra_core-1.3.8-py3-none-any.whl", "genlab-0.1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"x")
    missing = mw.missing_wheels(tmp_path)
    assert "hydra-core" not in missing and "genlab" not in missing and "omegaconf" in missing
    assert mw.check_size(tmp_path) == 2
    with open(tmp_path / "big.whl", "wb") as f:  # sparse: no disk used
        f.truncate(mw.CARRY_LIMIT + 1)
    with pytest.raises(SystemExit, match=r"over the 64 MiB .* big.whl"):
        mw.check_size(tmp_path)
    assert "--wheels wheels" in mw.gpu_command(Path(mw.REPO / "wheels"))

"""The benchmark suite runs on tiny settings and writes well-formed output (timings are never
asserted: these machines are shared and noisy)."""

import json
import os
import statistics
import subprocess
import sys

from fixtures import REPO


def test_benchmark_suite_writes_json_and_markdown(data_root, tmp_path):
    out, doc = tmp_path / "results.json", tmp_path / "benchmarks.md"
    env = {**os.environ, "GENLAB_DATA_DIR": str(data_root), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--quick",
            "--cases",
            "vae",
            "switches",
            "speedrun",
            "startup",
            "overhead",
            "--out",
            str(out),
            "--doc",
            str(doc),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["env"]["device"] in ("cpu", "cuda") and results["env"]["torch"]
    rows = results["throughput"]
    assert [r["batch_size"] for r in rows] == [32, 128]
    for row in rows:
        speeds, runs = row["images_per_s"], row["runs"]
        assert set(speeds) == {"genlab", "plain_tensor_loop", "seed001_loop"}
        assert all(v > 0 for v in speeds.values())
        paired = [g / p for g, p in zip(runs["genlab"], runs["plain_tensor_loop"], strict=True)]
        assert row["ratio_to_floor"] == statistics.median(paired)
    switches, speedrun = results["switches"]
    assert switches["case"] == "ddpm_small switches"
    assert set(switches["ratio_to_off"]) == {"channels_last", "bf16-mixed"}
    assert all(v > 0 for v in switches["images_per_s"].values())
    # The speedrun preset's own U-Net, with bf16 and channels_last alone and together.
    assert speedrun["case"] == "ddpm_cpu switches"
    both = "bf16-mixed + channels_last"
    assert set(speedrun["ratio_to_off"]) == {"channels_last", "bf16-mixed", both}
    assert all(v > 0 for v in speedrun["images_per_s"].values())
    other = {row["case"]: row for row in results["other"]}
    assert other["startup: train.py --cfg job"]["seconds"] > 0
    # the first-step clock really fired inside the child run (its stamp file was read)
    assert other["startup: python train.py to its first training step"]["seconds"] > 0
    overhead = other["Lightning fixed cost per step"]
    assert overhead["ms_per_step"]["lightning"] > 0 and overhead["ms_per_step"]["plain"] > 0
    table = doc.read_text()
    assert "| vae MLP fashion_mnist | 32 |" in table and "train.py --cfg job" in table
    target = next(line for line in table.splitlines() if "VAE batch 128: >= 0.85" in line)
    ratio = rows[1]["ratio_to_floor"]
    assert f"| {ratio:.2f} |" in target
    assert ("| met |" in target) == (ratio >= 0.85)
    assert "| ddpm_small switches | 2 |" in table


def test_benchmark_rejects_unknown_cases():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--cases", "vea"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "unknown case(s) vea; choose from vae, ae" in result.stderr


def test_sample_quality_script_scores_a_conditional_run(compose, data_root, tmp_path):
    """benchmarks/sample_quality.py (docs/results.md's numbers) on a tiny CVAE: the requested-
    class share is the classifier's agreement with the labels asked for, FID is finite."""
    import math

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from sample_quality import evaluate

    from genlab.training import run

    cfg = compose(
        "model=cvae",
        "data=mnist",
        "model.arch=mlp",
        "model.mlp.hidden=[64]",
        "model.latent_dim=4",
        "trainer.max_epochs=3",
        "test=false",
        "save_images=false",
    )
    run(cfg)
    row = evaluate(cfg.paths.output_dir, 40, None, str(data_root), seed=0)
    assert row["model"] == "cvae" and row["num_samples"] == 40 and row["step"] > 0
    assert math.isfinite(row["fid_domain"]) and row["fid_domain"] >= 0
    assert 0 <= row["requested_class_share"] <= 1 and 0 <= row["confident_share"] <= 1
    # Independent check of the share: classify the same samples again.
    from genlab.metrics.classifier import cache_path, load_classifier
    from genlab.models import MODEL_CLASSES
    from genlab.runs import load_run

    classifier, _ = load_classifier(cache_path(data_root, "mnist"), "mnist", [1, 28, 28])
    model = load_run(cfg.paths.output_dir, MODEL_CLASSES).model
    wanted = torch.arange(40) % 10
    samples = torch.cat([model.sample(40, wanted, generator=torch.Generator().manual_seed(0))])
    share = float((classifier(samples).argmax(1) == wanted).float().mean())
    assert row["requested_class_share"] == round(share, 4)

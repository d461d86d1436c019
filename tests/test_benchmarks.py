"""The benchmark suite runs on tiny settings and writes well-formed output (timings are never
asserted: these machines are shared and noisy)."""

import json
import os
import subprocess
import sys

from conftest import REPO


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
            "startup",
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
        speeds = row["images_per_s"]
        assert set(speeds) == {"genlab", "plain_tensor_loop", "seed001_loop"}
        assert all(v > 0 for v in speeds.values())
        assert row["ratio_to_floor"] == speeds["genlab"] / speeds["plain_tensor_loop"]
    assert results["other"][0]["case"].startswith("startup") and results["other"][0]["seconds"] > 0
    table = doc.read_text()
    assert "| vae MLP fashion_mnist | 32 |" in table and "train.py --cfg job" in table

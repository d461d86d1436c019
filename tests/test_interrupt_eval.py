"""SIGTERM while a run evaluates: the run stops within seconds (not after a test batch that can
take minutes), exits 143 with a message that says training had finished, and keeps the
training metrics in metrics.json."""

import json
import os
import signal
import subprocess
import sys
import time

from fixtures import FAST, REPO

from genlab import interrupt


def test_poll_raises_only_when_watched_and_requested():
    requested = []
    interrupt.poll()  # nothing watched: returns
    interrupt.watch(lambda: bool(requested), lambda: RuntimeError("stop"))
    try:
        interrupt.poll()
        requested.append(True)
        try:
            interrupt.poll()
        except RuntimeError as err:
            assert str(err) == "stop"
        else:
            raise AssertionError("poll() did not raise after the request")
    finally:
        interrupt.unwatch()
    interrupt.poll()


def test_sigterm_during_the_test_stage_stops_within_seconds(data_root, tmp_path):
    run_dir = tmp_path / "run"
    # K = 10^7 importance samples per test image: this test stage would run for hours.
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "train.py"),
            *FAST,
            "model.mlp.hidden=[32]",
            "model.latent_dim=4",
            "model.iwae_k_test=10000000",
            "eval.sample_quality=false",
            "save_images=false",
            f"paths.data_dir={data_root}",
            f"hydra.run.dir={run_dir}",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        for line in proc.stdout:  # the progress callback announces the test stage
            lines.append(line)
            if "testing:" in line:
                break
        time.sleep(1.0)  # well inside the first test batch
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 143, output[-3000:]
    assert waited < 20, waited  # seconds, not the hours the batch would take
    assert "while testing" in output and "ckpt_path=last" in output
    assert "Traceback" not in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "val/elbo" in metrics and not any(k.startswith("test/") for k in metrics)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

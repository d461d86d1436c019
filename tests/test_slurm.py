"""Sweeps through `hydra/launcher=slurm` on a real single-node Slurm cluster
(tests/slurm_cluster.py): a DDP sweep of two jobs, a job cancelled with scancel, a job preempted
and requeued, a job logging to W&B cancelled (its W&B service is signalled with it).

Skipped only where Slurm is not installed and CI is not set; .ci/run installs it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures import REPO
from slurm_cluster import LocalSlurm, missing_tools
from test_sweep import job_dirs, status, tiny
from wandb_offline import find_runs, read_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = missing_tools()
    reason = ""
    if missing:
        reason = (
            f"Slurm is not installed here ({', '.join(missing)} missing): "
            "apt-get install slurm-wlm munge slurmdbd mariadb-server"
        )
    elif os.geteuid() != 0:
        reason = "the local Slurm cluster runs its daemons as root"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests (.ci/run installs Slurm): {reason}")
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


def start_sweep(slurm, tmp_path, *args) -> subprocess.Popen:
    env = {**slurm.env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_MODE", None)
    # An earlier in-process W&B test leaves its service's address in WANDB_SERVICE; a job that
    # inherits it talks to that service (which scancel does not reach) instead of its own.
    env.pop("WANDB_SERVICE", None)
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=slurm", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def release_requeued(slurm, slurm_id: str, timeout: float) -> None:
    """Wait until Slurm has put the requeued job back in the queue, then let it start now (Slurm
    holds a requeued job back for a while: its BeginTime)."""

    def pending_again():
        state = subprocess.run(
            ["squeue", "-h", "-j", slurm_id, "-o", "%T"],
            env=slurm.env,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return state == "PENDING"

    wait_for(pending_again, timeout, "the requeued job")
    subprocess.run(
        ["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"], env=slurm.env, check=True
    )


def running_job(job_dir_glob: str, sweep_dir: Path, with_checkpoint: bool = False):
    for d in sweep_dir.glob(job_dir_glob):
        record = (d / "status.json").exists() and status(d)
        ready = not with_checkpoint or (d / "checkpoints" / "last.ckpt").exists()
        if record and record["status"] == "running" and ready:
            return record["slurm_job_id"]
    return None


def test_ddp_sweep_on_slurm_with_a_cancelled_job(slurm, data_root, tmp_path):
    """Two DDP jobs, each one Slurm job of 2 tasks = 2 ranks. Job 0 completes; job 1 is
    cancelled with scancel while it trains: it is reported as cancelled, and the sweep ends
    (exit code 1) instead of waiting for it forever."""
    sweep_dir = tmp_path / "sweep"
    proc = start_sweep(
        slurm,
        tmp_path,
        *tiny(data_root),
        "trainer=ddp",
        "test=false",
        "trainer.max_epochs=1,1000",
        f"hydra.sweep.dir={sweep_dir}",
    )
    slurm_id = wait_for(lambda: running_job("1_*", sweep_dir), 240, "job 1 to run")
    subprocess.run(["scancel", slurm_id], env=slurm.env, check=True)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, out[-4000:]
    done, cancelled = job_dirs(sweep_dir)
    assert [done.name, cancelled.name] == ["0_max_epochs=1", "1_max_epochs=1000"]

    record = status(done)
    assert record["status"] == "completed" and record["slurm_job_id"]
    ckpt = torch.load(done / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5  # 2 ranks share the 288 images: both trained
    log = (done / "train.log").read_text()  # both tasks log the values they composed
    assert "rank 0: trainer.max_epochs=1" in log and "rank 1: trainer.max_epochs=1" in log
    assert (done / "samples.png").exists()

    record = status(cancelled)
    assert record["status"] == "cancelled" and "CANCELLED" in record["error"]
    report = (sweep_dir / "report" / "report.md").read_text()
    assert "| 0 | completed | 1 |" in report and "| 1 | cancelled | 1000 |" in report
    assert "1 of 2 jobs completed" in out


def test_preempted_job_checkpoints_is_requeued_and_resumes(slurm, data_root, tmp_path):
    """USR2 (what submitit asks Slurm to send before a time limit or at preemption): the job
    writes last.ckpt at the next batch, submitit requeues it, and it resumes from there."""
    sweep_dir = tmp_path / "sweep"
    epochs = 100
    proc = start_sweep(
        slurm,
        tmp_path,
        *tiny(data_root),
        "test=false",
        "save_images=false",
        f"trainer.max_epochs={epochs}",
        "model.beta=choice(1)",
        f"hydra.sweep.dir={sweep_dir}",
    )
    slurm_id = wait_for(
        lambda: running_job("0_*", sweep_dir, with_checkpoint=True), 120, "a first checkpoint"
    )
    subprocess.run(["scancel", "--signal=USR2", slurm_id], env=slurm.env, check=True)
    release_requeued(slurm, slurm_id, 60)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    (job,) = job_dirs(sweep_dir)
    record = status(job)
    assert record["status"] == "completed" and record["attempts"] == 2
    log = (job / "train.log").read_text()
    assert "Slurm signal SIGUSR2: stopping after this batch" in log
    interrupted_at = int(log.split("Interrupted by SIGTERM at step ")[1].split(";")[0])
    assert "resumes from its newest checkpoint" in log
    assert 0 < interrupted_at < epochs * 9
    # The second attempt goes on in csv/version_0 (genlab.dashboards.CSVLogger): one curve,
    # from step 0 to the end, each step once.
    assert [p.name for p in (job / "csv").iterdir()] == ["version_0"]
    with open(job / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(row["step"]) for row in rows]
    assert steps == sorted(steps) and steps[0] < interrupted_at and max(steps) == epochs * 9 - 1
    epoch_ends = [int(row["step"]) for row in rows if row.get("train/loss_epoch")]
    assert len(epoch_ends) == len(set(epoch_ends)) == epochs
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["val/elbo"] < 0


def test_cancelled_job_logging_to_wandb_is_cancelled_and_its_wandb_run_closed(
    slurm, data_root, tmp_path
):
    """scancel signals every process of the job, wandb's service (wandb-core) too, which dies
    without writing out its buffer. The job still stops as an interruption (not "failed:
    Connection lost"), the launcher records it as cancelled, and the W&B run (same id, reopened
    in a fresh service) is closed with exit code 143, its last values and genlab/status."""
    sweep_dir = tmp_path / "sweep"
    proc = start_sweep(
        slurm,
        tmp_path,
        *tiny(data_root),
        "test=false",
        "save_images=false",
        "logger=[csv,wandb]",
        "trainer.max_epochs=1000",
        "trainer.log_every_n_steps=1",
        "model.beta=choice(1)",
        f"hydra.sweep.dir={sweep_dir}",
    )
    slurm_id = wait_for(
        lambda: running_job("0_*", sweep_dir, with_checkpoint=True), 120, "a first checkpoint"
    )
    subprocess.run(["scancel", slurm_id], env=slurm.env, check=True)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, out[-4000:]
    (job,) = job_dirs(sweep_dir)
    record = status(job)
    assert record["status"] == "cancelled" and "CANCELLED" in record["error"], record
    assert "Interrupted by SIGTERM at step" in record["error"]  # the job's own record, kept
    assert "Connection lost" not in record["error"]
    log = (job / "train.log").read_text()
    assert "Reopened the run in a new service" in log, log[-3000:]  # wandb-core did die
    ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    run_id = ckpt["callbacks"]["RunIdentity"]["wandb_run_id"]

    closed = [r for r in map(read_run, find_runs(job / "wandb")) if r.exit_code is not None]
    assert [r.id for r in closed] == [run_id]
    (run,) = closed
    assert run.exit_code == 143
    assert run.summary["genlab/status"] == "cancelled" and run.summary["genlab/signal"] == "SIGTERM"
    metrics_csv = sorted((job / "csv").glob("version_*/metrics.csv"))[-1]
    with open(metrics_csv) as f:
        elbo = [float(row["val/elbo"]) for row in csv.DictReader(f) if row.get("val/elbo")]
    assert run.summary["val/elbo"] == pytest.approx(elbo[-1])
    assert run.config["sweep_job"]["num"] == 0  # the run config, written again

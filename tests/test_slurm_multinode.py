"""DDP across Slurm nodes: `hydra/launcher=slurm trainer.num_nodes=2 trainer.devices=1` on a
simulated two-node cluster (tests/slurm_cluster.py, `LocalSlurm(nodes=2)`: each node's slurmd
in a network namespace of its own, so the ranks' rendezvous and gradients cross a real network
hop), and the launcher's checks of a multi-node layout before anything is submitted.

The cluster tests skip only where Slurm (or iproute2) is missing and CI is not set."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from slurm_cluster import LocalSlurm, missing_tools
from test_slurm import release_requeued, start_sweep, wait_for
from test_sweep import job_dirs, status, tiny
from wandb_offline import find_runs, read_run

from genlab import GenlabError

STEPS_PER_EPOCH = 5  # 288 training images over 2 ranks, batches of 32


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_tools(nodes=2)
    reason = ""
    if missing:
        reason = (
            f"Slurm is not installed here ({', '.join(missing)} missing): apt-get install "
            "slurm-wlm munge slurmdbd mariadb-server iproute2"
        )
    elif os.geteuid() != 0:
        reason = "the simulated cluster makes network namespaces and runs its daemons as root"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests (.ci/run installs Slurm): {reason}")
        pytest.skip(reason)
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm2"), nodes=2)
    slurm.start()  # stops what it started when a daemon does not come up
    try:
        yield slurm
    finally:
        slurm.stop()


# -- the checks before submission (no cluster needed) --------------------------------------------
PARTITIONS = (
    "PartitionName=debug AllowGroups=ALL Default=YES Nodes=node[1-2] TotalCPUs=8 TotalNodes=2\n"
    "PartitionName=big AllowGroups=ALL Default=NO Nodes=node[1-8] TotalCPUs=32 TotalNodes=8\n"
)
ARGV = ["-m", "hydra/launcher=slurm", "trainer.devices=1", "model.beta=1,2"]


@pytest.fixture
def two_partitions(monkeypatch):
    """Slurm's tools "on PATH", `scontrol ping` answering UP and `scontrol show partition`
    answering PARTITIONS."""
    import genlab.sweep.precheck as precheck_module

    def scontrol(cmd, **kw):
        if cmd[:2] == ["scontrol", "ping"]:  # the controller answers
            return subprocess.CompletedProcess(cmd, 0, "Slurmctld(primary) at node1 is UP\n", "")
        assert cmd[:3] == ["scontrol", "show", "partition"]
        return subprocess.CompletedProcess(cmd, 0, PARTITIONS, "")

    monkeypatch.setattr(precheck_module.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(precheck_module.subprocess, "run", scontrol)


def test_a_multi_node_layout_that_fits_is_accepted(two_partitions):
    from genlab.cli import precheck

    precheck([*ARGV, "trainer.num_nodes=2"], "train")  # strategy auto: Lightning picks ddp
    big = ["trainer.num_nodes=8", "hydra.launcher.partition=big", "trainer.strategy=ddp"]
    precheck([*ARGV, *big], "train")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.num_nodes=3"], "but the Slurm partition debug has 2 nodes"),
        (
            ["trainer.num_nodes=9", "hydra.launcher.partition=big"],
            "but the Slurm partition big has 8 nodes: Slurm would refuse the job",
        ),
        (
            ["trainer.num_nodes=2", "hydra.launcher.tasks_per_node=2"],
            "hydra.launcher.tasks_per_node=2 but trainer.devices=1",
        ),
        (
            ["trainer.num_nodes=2", "trainer.strategy=ddp_spawn"],
            "trainer.strategy=ddp_spawn cannot span trainer.num_nodes=2 nodes",
        ),
        (
            ["trainer.num_nodes=2", "trainer.strategy=single_device"],
            "trainer.strategy=single_device cannot span",
        ),
        (
            ["trainer.num_nodes=2", "hydra.launcher.partition=gpu"],
            "has no partition gpu. Its partitions: big, debug",
        ),
    ],
)
def test_a_multi_node_layout_slurm_cannot_run_is_refused(overrides, message, two_partitions):
    from genlab.cli import precheck

    with pytest.raises(GenlabError, match=re.escape(message)):
        precheck([*ARGV, *overrides], "train")


# -- on the simulated cluster ---------------------------------------------------------------------
@pytest.mark.slurm
def test_more_nodes_than_the_partition_has_exits_2_before_any_job(cluster, tmp_path):
    def jobs() -> str:
        return subprocess.run(
            ["sacct", "-n", "-X", "-o", "JobID"], env=cluster.env, capture_output=True, text=True
        ).stdout

    before = jobs()
    proc = start_sweep(cluster, tmp_path, "trainer.num_nodes=3", "trainer.devices=1")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    assert "trainer.num_nodes=3, but the Slurm partition debug has 2 nodes" in out
    assert "Traceback" not in out and not (tmp_path / "outputs").exists()
    assert jobs() == before  # nothing was submitted


def _veth_bytes(cluster: LocalSlurm, node: int) -> int:
    """Bytes through node `node`'s end of the bridge (this machine's side of its veth)."""
    veth = Path(f"/sys/class/net/glve{cluster.network.octet}n{node}/statistics")
    return sum(int((veth / f"{d}_bytes").read_text()) for d in ("rx", "tx"))


def _task_process(slurm_id: str, rank: int) -> int | None:
    """The pid of Slurm task `rank` of job `slurm_id` (`<array>_<index>` or a plain id)."""
    if "_" in slurm_id:
        array, index = slurm_id.split("_")
        want = {b"SLURM_ARRAY_JOB_ID=" + array.encode(), b"SLURM_ARRAY_TASK_ID=" + index.encode()}
    else:
        want = {b"SLURM_JOB_ID=" + slurm_id.encode()}
    want.add(f"SLURM_PROCID={rank}".encode())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"submitit.core._submit" not in (proc / "cmdline").read_bytes():
                continue
            if want <= set((proc / "environ").read_bytes().split(b"\0")):
                return int(proc.name)
        except OSError:
            continue
    return None


def _running_with_checkpoint(job_dir: Path) -> str | None:
    record = (job_dir / "status.json").exists() and status(job_dir)
    ready = (job_dir / "checkpoints" / "last.ckpt").exists()
    return record["slurm_job_id"] if record and record["status"] == "running" and ready else None


def _one_process_kl(job_dir: Path, ckpt: Path, split: str) -> float:
    """The mean KL over the whole `split`, from one process (exact given the encoder)."""
    from omegaconf import OmegaConf

    from genlab.builders import build_datamodule
    from genlab.models import VAE

    cfg = OmegaConf.load(job_dir / "config.yaml")
    model = VAE.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = build_datamodule(cfg)
    dm.setup("fit" if split == "val" else "test")
    images, labels = dm.splits[split]
    with torch.no_grad():
        _, terms = model.compute_terms(images.float() / 255, labels)
    return float(terms["kl"].mean())


@pytest.mark.slurm
@pytest.mark.slow
def test_two_node_ddp_sweep_with_one_node_preempted(cluster, data_root, tmp_path):
    """A sweep of two jobs, each one Slurm job on both nodes (one rank per node, gloo across
    the bridge). Job 0 trains 2 epochs: its metrics are those of the whole splits, rank 0 wrote
    its one run dir, W&B run and checkpoints. Job 1 gets USR2 on node 2's task only: both ranks
    stop after the same batch, write last.ckpt, rank 0 requeues the job, and the whole job
    resumes on both nodes from there and completes, in the same W&B run."""
    sweep_dir = tmp_path / "sweep"
    long_epochs = 60
    node2_before = _veth_bytes(cluster, 2)
    proc = start_sweep(
        cluster,
        tmp_path,
        *tiny(data_root),
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "logger=[csv,wandb]",
        f"trainer.max_epochs=2,{long_epochs}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    job1 = sweep_dir / f"1_max_epochs={long_epochs}"
    slurm_id = wait_for(lambda: _running_with_checkpoint(job1), 240, "job 1's first checkpoint")
    pid = wait_for(lambda: _task_process(slurm_id, rank=1), 30, "job 1's task on node 2")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"SLURMD_NODENAME=node2" in environ
    os.kill(pid, signal.SIGUSR2)  # one node's task is preempted, the other's is not told
    release_requeued(cluster, slurm_id, 90)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    done, resumed = job_dirs(sweep_dir)
    assert [done.name, resumed.name] == ["0_max_epochs=2", f"1_max_epochs={long_epochs}"]

    # -- job 0: one job on both nodes, one run dir written by rank 0 ----------------------------
    record = status(done)
    assert record["status"] == "completed" and record["attempts"] == 1
    assert record["host"] == "node1"  # rank 0 (the batch step) runs on the first node
    logs = sweep_dir / ".submitit" / record["slurm_job_id"]
    assert "hostname=node1" in next(logs.glob("*_0_log.out")).read_text()
    assert "hostname=node2" in next(logs.glob("*_1_log.out")).read_text()
    log = (done / "train.log").read_text()  # both tasks composed the job's values
    assert "rank 0: trainer.max_epochs=2" in log and "rank 1: trainer.max_epochs=2" in log
    last = torch.load(done / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2 * STEPS_PER_EPOCH  # each rank trained on its half
    params = sum(p.numel() for p in last["state_dict"].values())
    # Gradients were all-reduced across the hop: node 2 sent and received them at every step.
    assert _veth_bytes(cluster, 2) - node2_before > 4 * params * 2 * STEPS_PER_EPOCH
    assert sorted(p.name for p in done.iterdir()) == [
        ".genlab.lock",
        ".hydra",
        "checkpoints",
        "config.yaml",
        "csv",
        "metrics.json",
        "previews",
        "reconstructions.png",
        "samples.png",
        "status.json",
        "train.log",
        "wandb",
    ]
    assert [p.name for p in (done / "csv").iterdir()] == ["version_0"]
    assert not (tmp_path / "outputs").exists()  # no rank wrote a run dir of its own
    metrics = json.loads((done / "metrics.json").read_text())
    # Validation and test metrics are those of the whole split, as one process computes them.
    with open(done / "csv" / "version_0" / "metrics.csv") as f:
        val = [row for row in csv.DictReader(f) if row.get("val/kl")][-1]
    val_kl = _one_process_kl(done, done / "checkpoints" / "last.ckpt", "val")
    assert float(val["val/kl"]) == pytest.approx(val_kl, rel=1e-4)
    # (the checkpoint the test stage restored, the best one; last.ckpt's record of it is older)
    best = log.split("Restoring states from the checkpoint path at ")[1].split()[0]
    test_kl = _one_process_kl(done, Path(best), "test")
    assert metrics["test/kl"] == pytest.approx(test_kl, rel=1e-4)
    (run_file,) = find_runs(done / "wandb")  # one W&B run, rank 0's
    run = read_run(run_file)
    assert run.exit_code == 0 and run.summary["test/kl"] == pytest.approx(metrics["test/kl"])

    # -- job 1: preempted on node 2, requeued as a whole, resumed --------------------------------
    record = status(resumed)
    assert record["status"] == "completed" and record["attempts"] == 2
    log = (resumed / "train.log").read_text()
    assert "Slurm signal SIGUSR2: stopping after this batch" in log and "(rank 1)" in log
    assert "Slurm signal SIGUSR2 reached another rank: stopping after this batch" in log
    interrupted_at = int(log.split("Interrupted by SIGTERM at step ")[1].split(";")[0])
    assert 0 < interrupted_at < long_epochs * STEPS_PER_EPOCH
    assert "resumes from its newest checkpoint" in log
    # The second attempt goes on in csv/version_0 (genlab.dashboards.CSVLogger): one curve,
    # from before the interruption to the end, in step order.
    assert [p.name for p in (resumed / "csv").iterdir()] == ["version_0"]
    with open(resumed / "csv" / "version_0" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if not row.get("test/kl")]  # training's
    steps = [int(row["step"]) for row in rows]
    assert steps == sorted(steps) and min(steps) < interrupted_at
    assert max(steps) == long_epochs * STEPS_PER_EPOCH - 1
    final = torch.load(
        resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert final["global_step"] == long_epochs * STEPS_PER_EPOCH
    runs = [read_run(f) for f in find_runs(resumed / "wandb")]
    assert len({r.id for r in runs}) == 1  # the second attempt continued the first's W&B run

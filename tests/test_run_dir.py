"""One live run per run dir, and a failed resume keeps the dir's records (issue 14, item 2):
real train.py processes side by side on one dir, a kill -9 of the holder, DDP ranks sharing
their rank 0's dir, and resumes into an existing dir that fail."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures import FAST, REPO
from test_robustness import SMALL, _train_cli

from genlab import GenlabError, rundir

LOCK = ".genlab.lock"


def _common(data_root, run_dir):
    return [*SMALL, *FAST, f"paths.data_dir={data_root}", "data=mnist", f"hydra.run.dir={run_dir}"]


def _records(run_dir: Path) -> dict[str, bytes]:
    files = [run_dir / "config.yaml", *sorted((run_dir / ".hydra").iterdir())]
    return {p.name if p.parent == run_dir else f".hydra/{p.name}": p.read_bytes() for p in files}


def _wait_for_holder(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        lock = run_dir / LOCK
        # config.yaml comes last (after Hydra's records): the first run is set up and training.
        if (run_dir / "config.yaml").is_file() and (text := lock.read_text()).startswith("pid"):
            return text
        time.sleep(0.2)
    raise AssertionError("the first run never started training")


def test_a_second_live_run_in_a_dir_is_refused_until_the_first_dies(data_root, tmp_path):
    run_dir = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "PYTHONUNBUFFERED": "1"}
    holder = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *_common(data_root, run_dir)]
        + ["+callbacks.hang._target_=helpers.Hang"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert f"pid {holder.pid} on host" in _wait_for_holder(run_dir, holder)
        hydra_records = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
        second = _train_cli(*_common(data_root, run_dir), "seed=1", timeout=120)
        assert holder.poll() is None  # refused while the first one runs
        assert second.returncode == 2, second.stderr[-2000:]
        message = second.stderr.strip().splitlines()[-1]
        assert message.startswith(f"genlab: error: The run dir {run_dir} is in use by another ")
        assert f"pid {holder.pid} on host " in message and "hydra.run.dir=<another dir>" in message
        assert "Traceback" not in second.stderr
        # It wrote nothing: the first run's Hydra records are its own (not seed=1's).
        assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == hydra_records
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    # The kernel released the dead holder's lock: the dir is free again (resume, from nothing).
    after = _train_cli(*_common(data_root, run_dir), "ckpt_path=last", timeout=300)
    assert after.returncode == 0, after.stderr[-2000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_the_lock_is_one_per_process_and_rank_zero_only(tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    with rundir.holding(run_dir):
        with rundir.holding(run_dir):  # this process again (train.py's guard, then run()): fine
            pass
        code = (
            "import sys; from genlab import rundir\n"
            "try:\n    rundir.lock(sys.argv[1])\nexcept Exception as err:\n    print(err)\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True
        )
        assert "in use by another live run" in other.stdout
        assert f"pid {os.getpid()} on host" in other.stdout
        for rank_var in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"):
            monkeypatch.setenv(rank_var, "1")
            assert not rundir.is_rank_zero()  # a DDP rank >= 1 never takes (nor waits for) it
            monkeypatch.delenv(rank_var)
    with rundir.holding(run_dir):  # released at the end of the block
        pass


def test_ddp_ranks_share_their_rank_zeros_dir(data_root, tmp_path):
    run_dir = tmp_path / "ddp"
    result = _train_cli(*_common(data_root, run_dir), "trainer=ddp", "trainer.accelerator=cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same dir
    assert (run_dir / "metrics.json").is_file()


def test_a_failed_resume_leaves_config_and_hydra_records_byte_identical(data_root, tmp_path):
    run_dir, secret = tmp_path / "run", "sk-genlab-resume-0123456789"
    common = [*_common(data_root, run_dir), "+notes=${oc.env:MY_SERVICE_TOKEN}"]

    def train(*args):
        return _train_cli(*common, *args, env={"MY_SERVICE_TOKEN": secret})

    first = train()
    assert first.returncode == 0, first.stderr[-2000:]
    before = _records(run_dir)
    assert set(before) == {"config.yaml", ".hydra/config.yaml", ".hydra/hydra.yaml",
                           ".hydra/overrides.yaml"}  # fmt: skip
    resume = ["ckpt_path=last", "trainer.max_epochs=2"]
    refused = train(*resume, "model=ae")  # another model type: refused before restoring
    assert refused.returncode == 2 and "model type of vae" in refused.stderr, refused.stderr
    assert _records(run_dir) == before
    mismatched = train(*resume, "model.latent_dim=8")  # a model the checkpoint does not fit
    assert mismatched.returncode != 0
    assert _records(run_dir) == before
    # A resume that restores does write its records (after the restore), secrets masked.
    resumed = train(*resume)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = _records(run_dir)
    assert b"ckpt_path=last" in after[".hydra/overrides.yaml"]
    assert b"ckpt_path" not in before[".hydra/overrides.yaml"]
    assert b"output_subdir: .hydra" in after[".hydra/hydra.yaml"]
    assert b"max_epochs: 2" in after["config.yaml"] and b"max_epochs: 1" in before["config.yaml"]
    assert all(secret.encode() not in data for data in after.values())
    assert b"notes: '***'" in after["config.yaml"]


def test_an_unwritable_run_dir_is_one_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(GenlabError, match=f"Cannot write into {blocker / 'run'}"):
        rundir.lock(blocker / "run")

"""Full disks and read-only dirs (issue 14, item 6), on a real small tmpfs and a tmpfs remounted
read-only: one message naming the path (GenlabError: exit 2), no partial file left, the earlier
checkpoint intact, and temp files only beside their target, never in the system temp dir."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures import REPO

from genlab import GenlabError
from genlab.checkpoints import AtomicCheckpointIO, load_checkpoint


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, read_only=False) -> a fresh tmpfs of that size; unmounted afterwards."""
    mounts = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
        mounts.append(point)
        if read_only:
            (point / "checkpoints").mkdir()
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return point

    yield mount
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], check=False)


def _checkpoint(mib: float, step: int) -> dict:
    return {"global_step": step, "w": torch.ones(int(mib * 2**18))}  # 4-byte floats


def test_a_full_disk_fails_one_message_keeps_the_earlier_checkpoint(tmpfs):
    disk = tmpfs("3m")
    io, path = AtomicCheckpointIO(), disk / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_checkpoint(1, step=1), path)
    with pytest.raises(GenlabError, match=f"Cannot write {path}: the disk is full"):
        io.save_checkpoint(_checkpoint(4, step=2), path)
    assert load_checkpoint(path)["global_step"] == 1  # the earlier checkpoint survives
    assert os.listdir(path.parent) == ["last.ckpt"]  # the partial file is gone: space is back
    io.save_checkpoint(_checkpoint(1, step=3), path)  # ... so the next (smaller) save fits
    assert load_checkpoint(path)["global_step"] == 3


def test_a_read_only_dir_fails_one_message(tmpfs):
    disk = tmpfs("1m", read_only=True)
    path = disk / "checkpoints" / "last.ckpt"
    with pytest.raises(GenlabError, match=f"Cannot write {path}: .*(read-only|cannot be written)"):
        AtomicCheckpointIO().save_checkpoint(_checkpoint(0.1, step=1), path)
    from genlab.sample.writer import write_outputs

    with pytest.raises(GenlabError, match=f"Cannot write {disk / 'samples'}"):
        write_outputs(disk / "samples", "grid", {".png": lambda p: p.write_bytes(b"x")}, False)


def test_a_read_only_run_dir_is_refused_before_hydra_writes(tmpfs, data_root):
    disk = tmpfs("1m", read_only=True)
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"paths.data_dir={data_root}", "data=mnist",
         f"hydra.run.dir={disk / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"genlab: error: Cannot write into {disk / 'run'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_kill_during_a_large_checkpoint_write_leaves_nothing_in_the_temp_dir(tmp_path):
    system_tmp, target = tmp_path / "system_tmp", tmp_path / "run" / "last.ckpt"
    system_tmp.mkdir()
    code = (
        "import sys, torch; from genlab.checkpoints import AtomicCheckpointIO\n"
        "AtomicCheckpointIO().save_checkpoint({'w': torch.ones(2**27)}, sys.argv[1])\n"
    )  # 512 MiB: seconds to write
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], env={**os.environ, "TMPDIR": str(system_tmp)}
    )

    # A loaded machine (the whole suite, other jobs) can take minutes to import torch and fill
    # 512 MiB: wait for the write to begin, however long that takes within the test's limit.
    # The write has begun when its file is in the run dir. (Starting, torch makes files of its
    # own in the temp dir, a compile cache folder torchinductor_<user> among them: not the
    # write's, which a staging write would leave there too and the assertion below finds.)
    def staged() -> list[Path]:
        return [p for p in system_tmp.iterdir() if not p.name.startswith("torchinductor_")]

    deadline = time.monotonic() + 600
    began = False
    while proc.poll() is None and time.monotonic() < deadline:
        if target.parent.is_dir() and any(target.parent.iterdir()):
            began = True
            break
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    assert began, "the writer never began its write"
    assert proc.returncode == -9 and not target.exists()  # killed mid-write
    assert staged() == []  # nothing staged in the system temp dir
    assert [p.name.endswith(".partial") for p in target.parent.iterdir()] == [True]
    # The next run to take the dir removes the dead writer's partial file (as large as the
    # checkpoint), and keeps one whose writer is alive (this process).
    from genlab.rundir import lock, unlock

    live = target.parent / f".last.ckpt.{os.getpid()}-0123abcd.partial"
    live.write_bytes(b"x")
    assert lock(target.parent)
    unlock(target.parent)
    assert sorted(p.name for p in target.parent.iterdir()) == [".genlab.lock", live.name]

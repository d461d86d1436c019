"""A run's results against a hostile (or careless) user, with real processes (issue 24, sections
2 and 6): a finished run's records survive every later command (a resume in place, the sweep run
again, a new run into its dir), run names stay inside the run root, a link in a run dir never
makes genlab write outside it, and what a killed write leaves is removed by the next command.

One tiny run is trained per session; each case works on a copy of it."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import FAST, REPO

from genlab import GenlabError

TINY = [
    "model.mlp.hidden=[32]",
    "model.latent_dim=2",
    *FAST,
    "eval.sample_quality=false",  # the test metrics are then the same at each evaluation
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "previews.keep=1",
]


def _env(outputs: Path) -> dict[str, str]:
    path = os.pathsep.join(
        [str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    )
    return {
        **os.environ,
        "PYTHONPATH": path,
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "GENLAB_OUTPUT_DIR": str(outputs),
    }


def _python(script: str, *args: str, cwd: Path, timeout: int = 300, env=None):
    return subprocess.run(
        [sys.executable, *([str(REPO / script)] if script else []), *args],
        cwd=cwd,
        env={**_env(cwd / "outputs"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train(data_root: Path, *args: str, cwd: Path, timeout: int = 300, env=None):
    flags = [a for a in args if a.startswith("-")]  # Hydra's -m goes before the overrides
    common = [*flags, f"paths.data_dir={data_root}", *TINY]
    rest = [a for a in args if not a.startswith("-")]
    return _python("train.py", *common, *rest, cwd=cwd, timeout=timeout, env=env)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links as their targets' names), byte for byte."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = b"<dir>"
    return found


def metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


def checkpoints(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (run_dir / "checkpoints").glob("*.ckpt")}


def assert_refused(proc, *named: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = proc.stderr[proc.stderr.index("genlab: error: ") :].strip()
    assert "\n" not in error, error  # one line
    for text in named:
        assert text in error, (text, error)
    return error


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="session")
def finished(data_root, tmp_path_factory) -> Path:
    """A finished run (trained, tested, pictures written), never changed by a test."""
    base = tmp_path_factory.mktemp("finished")
    proc = train(data_root, f"hydra.run.dir={base / 'run'}", cwd=base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = metrics(base / "run")
    assert any(k.startswith("train/") for k in keys) and "val/loss" in keys and "test/elbo" in keys
    return base / "run"


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run", symlinks=True))


# -- 2. A finished run resumed in place keeps its records --------------------------------------
@pytest.mark.parametrize(
    "resume",
    [
        ["ckpt_path=last"],
        ["ckpt_path={run}"],
        ["ckpt_path={run}/checkpoints/last.ckpt"],
        ["ckpt_path=last", "test=false"],
        ["ckpt_path=last", "save_images=false", "eval.iwae_k=3"],
    ],
    ids=["last", "run-dir", "ckpt-file", "no-test", "other-eval"],
)
def test_resuming_a_finished_run_in_place_keeps_every_record(data_root, run_copy, tmp_path, resume):
    before, ckpts = metrics(run_copy), checkpoints(run_copy)
    args = [a.format(run=run_copy) for a in resume]
    proc = train(data_root, *args, f"hydra.run.dir={run_copy}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = metrics(run_copy)
    assert set(before) <= set(after)
    # Nothing was left to train: the training and validation values are the recorded ones.
    trained = {k: v for k, v in before.items() if k.startswith(("train/", "val/"))}
    assert trained and {k: after[k] for k in trained} == trained
    if "eval.iwae_k=3" not in resume:  # the same evaluation of the same checkpoint
        assert after == before
    assert checkpoints(run_copy) == ckpts


def test_extending_a_finished_run_in_place_keeps_its_earlier_keys(data_root, run_copy, tmp_path):
    before = metrics(run_copy)
    more = ["ckpt_path=last", "trainer.max_epochs=2", f"hydra.run.dir={run_copy}"]
    proc = train(data_root, *more, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = metrics(run_copy)
    assert set(before) <= set(after)
    assert after["train/loss_epoch"] != before["train/loss_epoch"]  # the second epoch's mean
    assert any(p.name.startswith("epoch=001") for p in (run_copy / "checkpoints").iterdir())


def test_the_advice_after_sigterm_in_the_test_stage_keeps_the_training_values(data_root, tmp_path):
    run_dir = tmp_path / "run"
    stop = ["+callbacks.stop._target_=helpers.SignalInTest", f"hydra.run.dir={run_dir}"]
    stopped = train(data_root, *stop, cwd=tmp_path, env={"SIGNAL_IN_TEST": "1"})
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert f"ckpt_path=last hydra.run.dir={run_dir} " in stopped.stderr  # the real dir
    trained = metrics(run_dir)
    assert "val/loss" in trained and not any(k.startswith("test/") for k in trained)
    resumed = train(data_root, *stop, "ckpt_path=last", cwd=tmp_path)  # the same, + the advice
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = metrics(run_dir)
    assert {k: after[k] for k in trained} == trained and "test/elbo" in after


@pytest.mark.parametrize(
    "text", ["not json {", "[1, 2]", '{"val/loss": "low"}'], ids=["not-json", "list", "strings"]
)
def test_a_resume_in_place_that_cannot_keep_metrics_json_is_refused(
    data_root, run_copy, tmp_path, text
):
    (run_copy / "metrics.json").write_text(text)
    before = snapshot(run_copy)
    proc = train(data_root, "ckpt_path=last", f"hydra.run.dir={run_copy}", cwd=tmp_path)
    assert_refused(proc, f"{run_copy / 'metrics.json'}", f"ckpt_path={run_copy}")
    assert snapshot(run_copy) == before  # refused before the lock, train.log or .hydra/


def _jobs_csv(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "report" / "jobs.csv") as f:
        return [{k: v for k, v in row.items() if k != "ended"} for row in csv.DictReader(f)]


def test_running_a_finished_sweep_again_keeps_every_jobs_results(data_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "model.beta=1,2", f"hydra.sweep.dir={sweep_dir}"]
    first = train(data_root, *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.name[0].isdigit())
    assert len(jobs) == 2
    records = {p.name: (metrics(p), checkpoints(p)) for p in jobs}
    table = _jobs_csv(sweep_dir)
    assert table and all(row["val/loss"] for row in table)
    again = train(data_root, *args, cwd=tmp_path)  # "resumes each job"
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p.name: (metrics(p), checkpoints(p)) for p in jobs} == records
    assert _jobs_csv(sweep_dir) == table
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
    # Another sweep (other values) into the same dir would mix its jobs with these: refused.
    before = snapshot(sweep_dir)
    other = train(data_root, "-m", "model.beta=3,4", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert_refused(other, f"hydra.sweep.dir={sweep_dir}", "another sweep")
    assert snapshot(sweep_dir) == before


# -- A new run into a dir that holds results is refused ----------------------------------------
def test_a_new_run_into_a_finished_run_is_refused(data_root, run_copy, tmp_path):
    before = snapshot(run_copy)
    proc = train(data_root, f"hydra.run.dir={run_copy}", cwd=tmp_path)
    assert_refused(proc, f"hydra.run.dir={run_copy}", f"ckpt_path=last hydra.run.dir={run_copy}")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("config.yaml", b"my: own config\n"),
        ("metrics.json", b'{"accuracy": 0.97}'),
        ("checkpoints/last.ckpt", b"someone else's weights"),
    ],
)
def test_a_new_run_into_a_folder_holding_such_files_is_refused(data_root, tmp_path, name, content):
    folder = tmp_path / "theirs"
    (folder / name).parent.mkdir(parents=True)
    (folder / name).write_bytes(content)
    before = snapshot(folder)
    proc = train(data_root, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert_refused(proc, f"hydra.run.dir={folder}", name.split("/")[0])
    assert snapshot(folder) == before  # no lock, no train.log, no .hydra/ either


def test_another_runs_checkpoint_into_a_finished_run_is_a_new_run_and_refused(
    data_root, finished, run_copy, tmp_path
):
    """ckpt_path=<run B> hydra.run.dir=<run A> is no resume of A: it would replace A's config,
    checkpoints and metrics with B's continuation."""
    before = snapshot(run_copy)
    other = ["trainer.max_epochs=2", f"ckpt_path={finished}", f"hydra.run.dir={run_copy}"]
    assert_refused(train(data_root, *other, cwd=tmp_path), f"hydra.run.dir={run_copy}")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("holding", ["a finished run without checkpoints", "someone's folder"])
def test_ckpt_path_last_with_nothing_to_resume_is_a_new_run_and_refused(
    data_root, run_copy, tmp_path, holding
):
    """`last` where the dir holds no checkpoint starts afresh: into a dir holding results that
    is a new run over them (refused), not a resume that merges their metrics."""
    if holding == "a finished run without checkpoints":
        folder = run_copy
        shutil.rmtree(folder / "checkpoints")
    else:
        folder = tmp_path / "theirs"
        folder.mkdir()
        (folder / "config.yaml").write_text("my: precious config\n")
        (folder / "metrics.json").write_text('{"acc": 0.93}')
    before = snapshot(folder)
    proc = train(data_root, "ckpt_path=last", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert_refused(proc, f"hydra.run.dir={folder}")
    assert snapshot(folder) == before


def test_evaluate_into_a_finished_run_is_refused(data_root, finished, run_copy, tmp_path):
    before = snapshot(run_copy)
    proc = train(data_root, f"evaluate={finished}", f"hydra.run.dir={run_copy}", cwd=tmp_path)
    assert_refused(proc, f"hydra.run.dir={run_copy}")
    assert snapshot(run_copy) == before


def test_the_library_refuses_a_new_run_into_a_finished_run(data_root, run_copy, compose):
    import genlab
    from genlab.training import run

    before = snapshot(run_copy)
    overrides = [f"paths.data_dir={data_root}", *TINY, f"hydra.run.dir={run_copy}"]
    with pytest.raises(GenlabError, match="holds results already"):
        genlab.train(overrides)
    with pytest.raises(GenlabError, match="holds results already"):
        run(compose(*TINY, run_dir=run_copy))
    assert snapshot(run_copy) == before


def test_the_leftovers_of_a_refused_run_do_not_block_a_new_one(data_root, tmp_path):
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("[]\n")
    (folder / "train.log").write_text("")
    proc = train(data_root, "test=false", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/loss" in metrics(folder)


# -- Run names stay inside the run root --------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["../../../escaped", "/tmp/absolute-genlab-name", "a/b", "a\\b", "n" * 250, "''"],
    ids=["dotdot", "absolute", "slash", "backslash", "too-long", "empty"],
)
def test_a_name_that_would_leave_the_run_root_is_refused(data_root, tmp_path, name):
    proc = train(data_root, f"name={name}", cwd=tmp_path)
    assert_refused(proc, "Invalid config: name=", "hydra.run.dir=")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even outputs/
    assert not Path("/tmp/absolute-genlab-name").exists()


def test_a_sweep_name_that_would_leave_the_run_root_is_refused(data_root, tmp_path):
    proc = train(data_root, "-m", "model.beta=1,2", "sweep_name=../../x", cwd=tmp_path)
    assert_refused(proc, "sweep_name=", "hydra.sweep.dir=")
    assert list(tmp_path.iterdir()) == []


def test_the_library_refuses_a_name_with_a_path_in_it(data_root):
    import genlab

    with pytest.raises(GenlabError, match="name='../x'"):
        genlab.train([f"paths.data_dir={data_root}", *TINY, "name=../x"])


def test_two_runs_with_one_name_never_share_a_dir(data_root, tmp_path):
    quick = ["test=false", "save_images=false", "name=same"]
    for _ in range(2):
        assert train(data_root, *quick, cwd=tmp_path).returncode == 0
    runs = list((tmp_path / "outputs" / "runs").glob("*/*_same"))
    assert len(runs) == 2
    assert all((run / "metrics.json").is_file() for run in runs)


# -- Links in a run dir never make genlab write outside it -------------------------------------
@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ("train.log", "file"),
        (".genlab.lock", "file"),
        ("metrics.json", "file"),
        ("config.yaml", "file"),
        ("checkpoints/last.ckpt", "file"),
        ("samples.png", "file"),
        ("checkpoints", "dir"),
        (".hydra", "dir"),
        ("csv", "dir"),
        ("previews", "dir"),
        ("train.log", "dangling"),
    ],
)
def test_a_link_out_of_the_run_dir_is_refused_and_its_target_unchanged(
    data_root, run_copy, tmp_path, entry, kind
):
    victim = tmp_path / "victim"
    if kind == "dir":
        victim.mkdir()
        for name in ("last.ckpt", "config.yaml", "metrics.csv", "precious.txt"):
            (victim / name).write_text("the victim's\n")
    elif kind == "file":
        victim.write_text("the victim's\n")
    link = run_copy / entry
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink()
    link.symlink_to(victim, target_is_directory=kind == "dir")
    before = snapshot(tmp_path / "victim") if kind == "dir" else None
    proc = train(data_root, "ckpt_path=last", f"hydra.run.dir={run_copy}", cwd=tmp_path)
    assert_refused(proc, f"{link} is a link that leads out of", "hydra.run.dir=<a new dir>")
    if kind == "dir":
        assert snapshot(victim) == before
    elif kind == "file":
        assert victim.read_text() == "the victim's\n"
    else:
        assert not victim.exists()


def test_a_loop_of_links_in_a_run_dir_is_refused_by_name(data_root, run_copy, tmp_path):
    (run_copy / "a").symlink_to(run_copy / "b")
    (run_copy / "b").symlink_to(run_copy / "a")
    proc = train(data_root, "ckpt_path=last", f"hydra.run.dir={run_copy}", cwd=tmp_path)
    assert_refused(proc, str(run_copy))


def test_a_link_that_stays_inside_the_run_dir_is_fine(data_root, run_copy, tmp_path):
    (run_copy / "best.ckpt").symlink_to(run_copy / "checkpoints" / "last.ckpt")
    proc = train(data_root, "ckpt_path=last", "test=false", f"hydra.run.dir={run_copy}",
                 cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_hard_linked_train_log_is_refused(data_root, run_copy, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the victim's\n")
    (run_copy / "train.log").unlink()
    os.link(victim, run_copy / "train.log")
    proc = train(data_root, "ckpt_path=last", f"hydra.run.dir={run_copy}", cwd=tmp_path)
    assert_refused(proc, f"{run_copy / 'train.log'} is a hard link")
    assert victim.read_text() == "the victim's\n"


def test_a_fifo_for_train_log_is_refused_without_hanging(data_root, run_copy, tmp_path):
    (run_copy / "train.log").unlink()
    os.mkfifo(run_copy / "train.log")
    proc = train(
        data_root, "ckpt_path=last", f"hydra.run.dir={run_copy}", cwd=tmp_path, timeout=120
    )
    assert_refused(proc, str(run_copy / "train.log"))


def test_a_new_run_into_a_dir_holding_a_linked_log_is_refused(data_root, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the victim's\n")
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "train.log").symlink_to(victim)
    proc = train(data_root, f"hydra.run.dir={tmp_path / 'fresh'}", cwd=tmp_path)
    assert_refused(proc, "train.log")
    assert victim.read_text() == "the victim's\n"
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["train.log"]


def test_a_sweep_dir_holding_a_linked_job_log_is_refused(data_root, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the victim's\n")
    job = tmp_path / "sweep" / "0_beta=1"
    job.mkdir(parents=True)
    (job / "train.log").symlink_to(victim)
    proc = train(data_root, "-m", "model.beta=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                 cwd=tmp_path)  # fmt: skip
    assert_refused(proc, str(job / "train.log"))
    assert victim.read_text() == "the victim's\n"
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["0_beta=1"]


def test_the_report_command_refuses_a_report_folder_that_links_out(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "jobs.csv").write_text("the victim's table\n")
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "0_beta=1").mkdir(parents=True)
    (sweep_dir / "report").symlink_to(victim, target_is_directory=True)
    proc = _python("", "-m", "genlab.sweep.report", str(sweep_dir), cwd=tmp_path)
    assert_refused(proc, f"{sweep_dir / 'report'} is a link that leads out of")
    assert snapshot(victim) == {"jobs.csv": b"the victim's table\n"}


@pytest.mark.parametrize("name", ["jobs.csv", "report.md"])
def test_the_sweep_report_replaces_a_planted_link_instead_of_writing_through_it(tmp_path, name):
    from genlab.sweep.report import write_report

    victim = tmp_path / "victim.txt"
    victim.write_text("the victim's\n")
    sweep_dir = tmp_path / "sweep"
    for num, beta in ((0, 1), (1, 2)):
        job = sweep_dir / f"{num}_beta={beta}"
        job.mkdir(parents=True)
        (job / "metrics.json").write_text(json.dumps({"val/loss": 1.0 + num, "val/elbo": -num}))
        status = {"status": "completed", "num": num, "swept": {"model.beta": str(beta)}}
        (job / "status.json").write_text(json.dumps(status))
    (sweep_dir / "report").mkdir()
    (sweep_dir / "report" / name).symlink_to(victim)  # planted after the sweep's own check
    write_report(sweep_dir)
    assert victim.read_text() == "the victim's\n"
    assert not (sweep_dir / "report" / name).is_symlink()
    assert (sweep_dir / "report" / name).stat().st_size > 0


def test_sample_py_refuses_a_samples_folder_that_links_out_of_the_run(run_copy, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "samples.png").write_bytes(b"the victim's picture")
    (run_copy / "samples").symlink_to(victim, target_is_directory=True)
    proc = _python("sample.py", f"run={run_copy}", "n=4", "overwrite=true", cwd=tmp_path)
    assert_refused(proc, str(run_copy / "samples"), "out_dir=")
    assert snapshot(victim) == {"samples.png": b"the victim's picture"}


# -- 6. Interrupted writes are cleaned up ------------------------------------------------------
@pytest.mark.parametrize(
    ("signum", "code", "by"), [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "Ctrl-C")]
)
def test_a_signal_during_export_is_one_line_and_leaves_no_temporary_folder(
    finished, tmp_path, signum, code, by
):
    out = tmp_path / "exported"
    # A real signal to the export itself, once the weights are in its temporary folder.
    script = (
        "import os, signal\n"
        "import genlab.export as export\n"
        "card = export.model_card\n"
        "def signalled(*args):\n"
        f"    os.kill(os.getpid(), signal.{signum})\n"
        "    return card(*args)\n"
        "export.model_card = signalled\n"
        f"export.main([{str(finished)!r}, {str(out)!r}])\n"
    )
    proc = _python("", "-c", script, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        == f"genlab: error: Export stopped by {by}; nothing was written to {out}."
    )
    assert list(tmp_path.iterdir()) == []  # neither the export nor its .exported.tmp-<pid>


def test_an_export_removes_the_temporary_folders_of_killed_exports(finished, tmp_path):
    stale = tmp_path / f".old.tmp-{dead_pid()}"
    empty = tmp_path / f".empty.tmp-{dead_pid()}"
    live = tmp_path / f".busy.tmp-{os.getpid()}"  # a live writer's: kept
    nested = tmp_path / f".nested.tmp-{dead_pid()}"  # a folder in it: not an export's
    other = tmp_path / f".notes.tmp-{dead_pid()}"  # none of an export's files: not an export's
    for folder in (stale, empty, live, nested, other):
        folder.mkdir()
    for folder in (stale, live, nested):
        (folder / "model.safetensors").write_bytes(b"half")
    (nested / "sub").mkdir()
    (other / "notes.txt").write_text("mine")
    proc = _python("", "-m", "genlab.export", str(finished), str(tmp_path / "new"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not stale.exists() and not empty.exists()
    assert live.is_dir() and nested.is_dir() and (other / "notes.txt").read_text() == "mine"
    assert (tmp_path / "new" / "model.safetensors").is_file()


def test_sample_py_removes_the_partial_files_of_a_killed_write(run_copy, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".samples.png.{dead_pid()}-0123abcd.partial"
    live = out / f".samples.png.{os.getpid()}-0123abcd.partial"
    for path in (stale, live):
        path.write_bytes(b"half a picture")
    proc = _python("sample.py", f"run={run_copy}", "n=4", f"out_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not stale.exists() and live.exists()
    assert (out / "samples.png").stat().st_size > 100


@pytest.mark.parametrize(
    ("signum", "code", "by"), [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "Ctrl-C")]
)
def test_a_signal_while_sample_py_writes_leaves_no_partial_file(
    finished, tmp_path, signum, code, by
):
    out = tmp_path / "out"
    # A real signal to sample.py itself, once the picture is in its temporary file.
    script = (
        "import os, runpy, signal, sys\n"
        "import genlab.atomic as atomic\n"
        "replace = atomic.replace_atomically\n"
        "def signalled(path, write, **kwargs):\n"
        "    def then_signal(tmp):\n"
        "        write(tmp)\n"
        f"        os.kill(os.getpid(), signal.{signum})\n"
        "    return replace(path, then_signal, **kwargs)\n"
        "atomic.replace_atomically = signalled\n"
        f"sys.argv = ['sample.py', 'run={finished}', 'n=4', 'out_dir={out}']\n"
        f"runpy.run_path({str(REPO / 'sample.py')!r}, run_name='__main__')\n"
    )
    proc = _python("", "-c", script, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr[-3000:]
    message = f"genlab: error: sampling stopped by {by}; the file it was writing was removed."
    assert proc.stderr.strip() == message
    assert list(out.iterdir()) == []  # neither the picture nor its .partial file


def test_a_resume_removes_the_partial_files_of_a_killed_write(data_root, run_copy, tmp_path):
    pid = dead_pid()
    stale = [
        run_copy / "checkpoints" / f".last.ckpt.{pid}-0123abcd.partial",
        run_copy / "previews" / f".epoch=000-samples.png.{pid}-0123abcd.partial",
        run_copy / f".metrics.json.{pid}-0123abcd.partial",
    ]
    for path in stale:
        path.write_bytes(b"half")
    before = metrics(run_copy)
    proc = train(data_root, "ckpt_path=last", f"hydra.run.dir={run_copy}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(path.exists() for path in stale)
    assert metrics(run_copy) == before


def test_wandbs_own_core_log_link_does_not_block_a_resume(tmp_path):
    """wandb links wandb/<run>/logs/debug-core.log to its service's log in the user's cache: a
    requeued job's dir holds it (a two-node Slurm job was refused for it). A link of that name
    to anything else still is."""
    from genlab.rundir import check_run_dir

    run = tmp_path / "run"
    logs = run / "wandb" / "offline-run-1" / "logs"
    logs.mkdir(parents=True)
    cache = tmp_path / "home" / ".cache" / "wandb" / "logs"
    cache.mkdir(parents=True)
    (cache / "core-debug-20261206_1.log").write_text("")
    (logs / "debug-core.log").symlink_to(cache / "core-debug-20261206_1.log")
    check_run_dir(run, new_run=False)
    (logs / "debug-core.log").unlink()
    (logs / "debug-core.log").symlink_to(tmp_path / "victim.txt")
    with pytest.raises(GenlabError, match="leads out of"):
        check_run_dir(run, new_run=False)

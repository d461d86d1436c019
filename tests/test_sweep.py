"""Sweeps as users run them: `python train.py -m ...` in a subprocess on tiny real data files,
then the job folders, status files, report, W&B offline runs and checkpoints read back."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import FAST, REPO, TINY_DDPM
from PIL import Image
from wandb_offline import find_runs, read_run

from genlab import GenlabError
from genlab.sweep import keys as sweep_keys
from genlab.sweep.report import collect_jobs, write_report
from genlab.sweep.report import main as report_main


def tiny(data_root) -> list[str]:
    return [
        f"paths.data_dir={data_root}",
        "data=mnist",
        "model.mlp.hidden=[64]",
        "model.latent_dim=4",
        *FAST,
        "eval.sample_quality=false",
    ]


def sweep(*args, tmp_path: Path, env=None, timeout=300):
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "GENLAB_OUTPUT_DIR": str(tmp_path / "outputs"),
        **(env or {}),
    }
    env.pop("WANDB_MODE", None)  # offline because there is no key, as for a user
    env.pop("WANDB_SERVICE", None)  # each job its own service, as for a user (not this one's)
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit()),
        key=lambda p: int(p.name.split("_")[0]),
    )


def status(job_dir: Path) -> dict:
    return json.loads((job_dir / "status.json").read_text())


# -- a grid from the command line --------------------------------------------------------------
def test_grid_names_jobs_isolates_a_diverged_job_reports_and_logs_to_wandb(data_root, tmp_path):
    """beta x lr grid where lr=1e30 diverges: the other jobs run, each job is its own W&B run
    in the sweep's group, the report lists all four, and the command exits 1 at the end."""
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        *tiny(data_root),
        "logger=[csv,wandb]",
        "tags=[t1,t2]",
        "model.beta=0.5,1",
        "model.optimizer.lr=1e-3,1e30",
        f"hydra.sweep.dir={sweep_dir}",
        tmp_path=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 of 4 jobs completed" in result.stderr + result.stdout

    dirs = job_dirs(sweep_dir)
    assert [d.name for d in dirs] == [
        "0_beta=0.5,lr=0.001",
        "1_beta=0.5,lr=1e+30",
        "2_beta=1,lr=0.001",
        "3_beta=1,lr=1e+30",
    ]
    for d in dirs:
        diverged = d.name.endswith("1e+30")
        record = status(d)
        assert record["status"] == ("failed" if diverged else "completed")
        assert record["swept"] == {
            "model.beta": d.name.split("beta=")[1].split(",")[0],
            "model.optimizer.lr": d.name.split("lr=")[1],
        }
        assert (d / "metrics.json").exists() != diverged
        if diverged:
            assert record["error"].startswith("Training diverged")
            assert record["error_type"] == "TrainingDiverged"
        else:
            assert record["objective"]["val/loss"] == pytest.approx(
                json.loads((d / "metrics.json").read_text())["val/loss"]
            )
            assert (d / "samples.png").exists() and (d / "reconstructions.png").exists()

    # The report: a CSV and Markdown row per job, panels on the beta x lr axes, metric plots.
    report = sweep_dir / "report"
    with open(report / "jobs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["num"], r["status"], r["model.beta"], r["model.optimizer.lr"]) for r in rows] == [
        ("0", "completed", "0.5", "0.001"),
        ("1", "failed", "0.5", "1e+30"),
        ("2", "completed", "1", "0.001"),
        ("3", "failed", "1", "1e+30"),
    ]
    assert rows[1]["error"].startswith("Training diverged") and rows[0]["val/elbo"]
    assert Path(rows[2]["dir"]) == dirs[2].resolve()
    markdown = (report / "report.md").read_text()
    assert "| 1 | failed | 0.5 | 1e+30 |" in markdown and "Training diverged" in markdown
    panel = Image.open(report / "panel_samples.png")
    cell = Image.open(dirs[0] / "samples.png")
    assert panel.width > 2 * cell.width and panel.height > 2 * cell.height  # 2 x 2 cells
    assert (report / "panel_reconstructions.png").exists() and (report / "metrics.png").exists()

    # W&B, offline (no key): one finished run per job, grouped, named by its swept values.
    info = json.loads((sweep_dir / "sweep.json").read_text())
    assert info["keys"] == ["model.beta", "model.optimizer.lr"]
    runs = {}
    for d in dirs:
        files = find_runs(d / "wandb")
        assert len(files) == 1, f"{d.name}: {files}"
        runs[d.name] = read_run(files[0])
    assert len({run.id for run in runs.values()}) == 4
    for name, run in runs.items():
        assert run.group == info["group"] and run.group.startswith("vae-mnist-")
        assert run.name == name.split("_", 1)[1]
        assert run.tags == ["t1", "t2", *name.split("_", 1)[1].split(",")]  # + swept values
        assert str(run.config["model"]["beta"]) in (name.split("beta=")[1].split(",")[0], "1.0")
        assert run.config["sweep_job"]["swept"]["model.optimizer.lr"] == name.split("lr=")[1]
    done = runs["0_beta=0.5,lr=0.001"]
    assert done.exit_code == 0  # wandb.finish() ran at the end of the job
    assert runs["1_beta=0.5,lr=1e+30"].exit_code == 1  # the diverged job's run: failed
    assert done.metric("val/elbo") and done.summary["val/elbo"]["last"] == pytest.approx(
        json.loads((dirs[0] / "metrics.json").read_text())["val/elbo"], rel=1e-5
    )
    # Sample and reconstruction grids are logged as images, offline too.
    assert done.metric("val/samples/_type")[-1].startswith("images")
    assert any(f.startswith("media/images/val/reconstructions") for f in done.files)


# -- sweep configs -----------------------------------------------------------------------------
def compose_train(*overrides):
    from genlab.composition import compose

    return compose("train", overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    ("name", "data", "params"),
    [
        ("vae_beta_k", "mnist", {"model.beta": "2.5e-6,2.5e-2,1", "model.latent_dim": "3,16"}),
        ("vae_beta_cifar10", "cifar10", {"model.beta": "1e-4,5e-1"}),
        (
            "vae_beta_k_fashion",
            "fashion_mnist",
            {"model.beta": "2.5e-6,2.5e-2,1", "model.latent_dim": "3,16"},
        ),
    ],
)
def test_sweep_configs_hold_the_seed_grids(name, data, params):
    cfg = compose_train(f"sweep={name}")
    assert dict(cfg.hydra.sweeper.params) == params
    assert cfg.data.name == data and cfg.model.name == "vae"
    assert cfg.model.reduction == "mean"  # the convention of seed 002's beta values
    assert cfg.sweep_name == name
    if name == "vae_beta_cifar10":
        assert cfg.model.latent_dim == 16


def test_launcher_configs_have_documented_keys():
    slurm = compose_train("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4").hydra.launcher
    assert slurm._target_ == "hydra_plugins.genlab_sweep.GenlabSlurmLauncher"
    assert slurm.tasks_per_node == 4 and slurm.nodes == 1  # one Slurm task per DDP rank
    assert slurm.gpus_per_node is None  # CPU training: no GPUs asked for
    gpu = compose_train("hydra/launcher=slurm", "trainer=gpu", "trainer.devices=2").hydra.launcher
    assert gpu.gpus_per_node == 2
    for key in ("partition", "account", "timeout_min", "array_parallelism", "max_num_timeout"):
        assert key in slurm
    local = compose_train("hydra/launcher=local_parallel").hydra.launcher
    assert local.n_jobs == 2 and local._target_.endswith("GenlabLocalParallelLauncher")


# -- bad input, refused before any job starts --------------------------------------------------
BAD_SWEEPS = [
    ("unknown key", ["model.betta=1,2"], "Unknown config key 'model.betta'. Did you mean 'beta'?"),
    ("bad value", ["model.beta=1,-2"], "model.beta=-2. model.beta must be a number >= 0"),
    ("empty range", ["model.latent_dim=range(3,3)"], "Empty sweep: model.latent_dim=range(3,3)"),
    ("empty choice", ["model.latent_dim=choice()"], "Empty sweep"),
    ("group typo", ["model=vea,ae"], "Unknown option model=vea. Did you mean 'vae'?"),
    ("grid interval", ["model.beta=interval(0,1)"], "needs a list of values"),
    ("no trials", ["sweep=optuna_vae", "hydra.sweeper.n_trials=0"], "n_trials=0"),
    (
        "metric",
        ["sweep=optuna_vae", "optimize_metric=val/elboo"],
        "optimize_metric=val/elboo is not a metric this run logs",
    ),
    # Single-step values are curves only: run() returns the epoch mean, train/loss_epoch.
    (
        "step loss",
        ["sweep=optuna_vae", "optimize_metric=train/loss"],
        "optimize_metric=train/loss is not a metric this run logs",
    ),
    (
        "step loss suggestion",
        ["sweep=optuna_vae", "optimize_metric=train/loss_step"],
        "Did you mean 'train/loss_epoch'?",
    ),
    (
        "nll without importance samples",
        ["sweep=optuna_vae", "optimize_metric=val/nll", "model.iwae_k_val=0"],
        "optimize_metric=val/nll is not a metric this run logs",
    ),
]


@pytest.mark.parametrize(("case", "args", "message"), BAD_SWEEPS, ids=[b[0] for b in BAD_SWEEPS])
def test_precheck_refuses_bad_sweeps(case, args, message):
    from genlab.cli import precheck

    with pytest.raises(GenlabError, match=None) as err:
        precheck(["-m", *args], "train")
    assert message in str(err.value)


TINY_DDPM_RUN = [
    *TINY_DDPM,
    "model.warmup_steps=1",
    "model.test_bpd_images=16",
    "model.bpd_t_chunk=25",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=ae", "model.mlp.hidden=[64]"],
        ["model.mlp.hidden=[64]", "model.latent_dim=4", "model.iwae_k_test=4", "eval.domain=false"],
        TINY_DDPM_RUN + ["eval.sample_quality=false"],
    ],
    ids=["ae", "vae", "ddpm"],
)
def test_precheck_knows_exactly_what_run_returns(compose, overrides):
    """What the precheck accepts as optimize_metric is what train.py hands the sweeper."""
    from genlab.sweep.precheck import logged_metrics
    from genlab.training import run

    cfg = compose(*overrides, "save_images=false")
    assert logged_metrics(cfg) == set(run(cfg))


def test_slurm_tasks_must_match_ddp_devices(monkeypatch):
    import genlab.sweep.precheck as precheck_module
    from genlab.cli import precheck

    monkeypatch.setattr(precheck_module.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    precheck(["-m", "hydra/launcher=slurm", "trainer=ddp", "model.beta=1,2"], "train")  # follows
    with pytest.raises(GenlabError, match="tasks_per_node=1 but trainer.devices=2"):
        precheck(
            ["-m", "hydra/launcher=slurm", "trainer=ddp", "hydra.launcher.tasks_per_node=1"],
            "train",
        )


def test_slurm_launcher_without_sbatch_is_refused_before_anything_runs(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent)}  # python, but no Slurm tools
    result = sweep("model.beta=1,2", "hydra/launcher=slurm", tmp_path=tmp_path, env=env)
    assert result.returncode == 2
    assert "genlab: error: hydra/launcher=slurm submits jobs to Slurm, but sbatch" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "outputs").exists()


# -- the report on its own ---------------------------------------------------------------------
def _fake_job(sweep_dir: Path, num: int, swept: dict, state: str, metrics=None, image=True):
    d = sweep_dir / f"{num}_{sweep_keys.label(swept)}"
    d.mkdir(parents=True)
    record = {"status": state, "num": num, "swept": swept, "overrides": []}
    if state == "failed":
        record["error"] = "Training diverged: the loss is nan at step 3"
    (d / "status.json").write_text(json.dumps(record))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if image:
        for name in ("samples", "reconstructions"):
            Image.new("L", (50, 40), color=num * 20).save(d / f"{name}.png")
    return d


def test_report_command_lays_out_one_or_three_swept_keys(tmp_path, capsys):
    one = tmp_path / "one"
    for num, beta in enumerate(["1", "0.01", "0.1"]):
        _fake_job(one, num, {"model.beta": beta}, "completed", {"val/elbo": -float(num)})
    (one / "sweep.json").write_text(json.dumps({"name": "one", "keys": ["model.beta"]}))
    assert report_main([str(one), "--metrics", "val/elbo"]) == 0
    assert "3 of 3 jobs completed" in capsys.readouterr().out
    panel = Image.open(one / "report" / "panel_samples.png")
    assert panel.width > 3 * 50 and panel.height < 2 * 160  # one row, three columns
    with open(one / "report" / "jobs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model.beta"] for r in rows] == ["1", "0.01", "0.1"]  # by job number

    three = tmp_path / "three"
    keys = ["model.beta", "model.latent_dim", "seed"]
    num = 0
    for beta in ("0.1", "1"):
        for k in ("2", "8"):
            for seed in ("0", "1"):
                state = "failed" if (beta, k, seed) == ("1", "8", "1") else "completed"
                swept = {"model.beta": beta, "model.latent_dim": k, "seed": seed}
                metrics = None if state == "failed" else {"val/elbo": -num, "val/kl": num}
                _fake_job(three, num, swept, state, metrics, image=state == "completed")
                num += 1
    _fake_job(three, num, {"model.beta": "1", "model.latent_dim": "2", "seed": "2"}, "running")
    (three / "sweep.json").write_text(json.dumps({"name": "three", "keys": keys}))
    report = write_report(three)  # at the end of a sweep: "running" means the job died
    assert [j.status for j in report.jobs].count("failed") == 2
    names = sorted(p.name for p in (three / "report").glob("panel_samples*.png"))
    assert names == [
        "panel_samples__seed=0.png",
        "panel_samples__seed=1.png",
        "panel_samples__seed=2.png",
    ]
    assert (three / "report" / "metrics.png").exists()
    assert [j.status for j in collect_jobs(three)][-1] == "running"  # while still running


# -- DDP inside a sweep ------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_jobs_of_a_sweep_train_every_rank_with_the_jobs_values(data_root, tmp_path):
    """trainer=ddp under -m: each job runs its 2 gloo ranks with its own beta, in its own folder
    (Lightning alone would make rank 1 re-run the whole sweep)."""
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        *tiny(data_root),
        "trainer=ddp",
        "test=false",
        "save_images=false",
        "model.beta=0.5,2",
        f"hydra.sweep.dir={sweep_dir}",
        tmp_path=tmp_path,
        timeout=420,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = job_dirs(sweep_dir)
    assert [d.name for d in dirs] == ["0_beta=0.5", "1_beta=2"]
    assert not (tmp_path / "outputs").exists()  # no rank wrote a run or sweep of its own
    for d, beta in zip(dirs, ("0.5", "2"), strict=True):
        assert status(d)["status"] == "completed" and status(d)["attempts"] == 1
        ckpt = torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["hyper_parameters"]["beta"] == float(beta)
        assert ckpt["global_step"] == 5  # 288 train images / 2 ranks / batch 32: both trained
        # Each rank logs the values it composed itself (and refuses to train with others).
        assert f"rank 0: model.beta={beta}" in (d / "train.log").read_text()
        assert f"rank 1: model.beta={beta}" in (d / "train_ddp_process_1.log").read_text()


# -- searches, interruptions, other launchers ---------------------------------------------------
@pytest.mark.slow
def test_optuna_search_on_local_parallel_optimises_the_returned_metric(data_root, tmp_path):
    """sweep=optuna_vae maximises val/elbo: every trial returns its final val/elbo to Optuna.
    hydra/launcher=local_parallel runs the two trials at once, in two worker processes."""
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        *tiny(data_root),
        "sweep=optuna_vae",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=local_parallel",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep_dir}",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = job_dirs(sweep_dir)
    assert len(dirs) == 2 and status(dirs[0])["pid"] != status(dirs[1])["pid"]
    elbos = [json.loads((d / "metrics.json").read_text())["val/elbo"] for d in dirs]
    for d, elbo in zip(dirs, elbos, strict=True):
        assert status(d)["objective"] == {"val/elbo": pytest.approx(elbo)}
        assert d.name.split("_", 1)[1].startswith("beta=")
    from omegaconf import OmegaConf

    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(elbos))  # direction: maximize
    assert (sweep_dir / "report" / "panel_samples.png").exists()  # a gallery of the trials


def test_a_killed_local_parallel_job_fails_alone(data_root, tmp_path):
    """hydra/launcher=local_parallel runs the two jobs at once, each in a process of its own.
    kill -9 of job 0's process while it trains: job 1 still completes, job 0's status.json says
    it failed and by which signal (not `running`), and the sweep exits 1 at the end."""
    import signal
    import time

    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENLAB_OUTPUT_DIR": str(tmp_path / "out")}
    env.pop("WANDB_MODE", None)
    command = [sys.executable, str(REPO / "train.py"), "-m", *tiny(data_root), "test=false"]
    command += ["hydra/launcher=local_parallel", f"hydra.sweep.dir={sweep_dir}"]
    # Job 0 trains for long enough to be killed; job 1 for one epoch.
    command += ["trainer.max_epochs=500,1", "trainer.limit_train_batches=2"]
    log = (tmp_path / "sweep.log").open("w")  # a file: a full pipe would stall the jobs
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    job0_pid, deadline = None, time.monotonic() + 120
    while job0_pid is None and time.monotonic() < deadline and proc.poll() is None:
        dirs = job_dirs(sweep_dir) if sweep_dir.is_dir() else []
        record = status(dirs[0]) if dirs and (dirs[0] / "status.json").exists() else {}
        # The sweep process writes `running` first; the job's own process then records itself.
        mine = record.get("status") == "running" and record.get("pid") != proc.pid
        if mine and (dirs[0] / "checkpoints").is_dir():  # training, past its first epoch
            job0_pid = record["pid"]
        time.sleep(0.2)
    assert job0_pid is not None, "job 0 never started training"
    os.kill(job0_pid, signal.SIGKILL)
    proc.wait(timeout=240)
    assert proc.returncode == 1, (tmp_path / "sweep.log").read_text()[-3000:]
    killed, healthy = (status(d) for d in job_dirs(sweep_dir))
    assert killed["status"] == "failed" and "killed by signal 9" in killed["error"]
    assert healthy["status"] == "completed"
    assert (job_dirs(sweep_dir)[1] / "metrics.json").exists()
    assert job0_pid != healthy["pid"] != proc.pid  # each job in a process of its own


def test_ctrl_c_stops_the_sweep_and_running_it_again_resumes(data_root, tmp_path):
    """SIGINT in job 0: it writes last.ckpt and stops, the sweep stops too (exit 130) and the
    report lists what ran. The same command again continues job 0 from its checkpoint (what a
    requeued Slurm job does too) and runs job 1."""
    sweep_dir = tmp_path / "sweep"
    common = [*tiny(data_root), "test=false", "model.beta=0.5,1", f"hydra.sweep.dir={sweep_dir}"]
    first = sweep(
        *common,
        "+callbacks.stop._target_=helpers.SelfSignal",
        "+callbacks.stop.step=3",
        "+callbacks.stop.signum=SIGINT",
        tmp_path=tmp_path,
        env={"PYTHONPATH": str(REPO / "tests")},
    )
    assert first.returncode == 130, first.stderr[-3000:]
    (only,) = job_dirs(sweep_dir)  # job 1 never started
    record = status(only)
    assert record["status"] == "interrupted"
    assert "Interrupted by SIGINT at step 3" in record["error"]
    assert (only / "checkpoints" / "last.ckpt").exists()
    assert "| 0 | interrupted | 0.5 |" in (sweep_dir / "report" / "report.md").read_text()

    # Without the test's stop callback: a change of settings, which a resume refuses unless it
    # is asked for (genlab.checkpoints); a user reruns the very same command.
    second = sweep(*common, "resume_changes=allow", tmp_path=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed, fresh = job_dirs(sweep_dir)
    assert resumed == only and status(resumed)["attempts"] == 2
    assert status(resumed)["status"] == status(fresh)["status"] == "completed"
    assert "resumes from its newest checkpoint" in (resumed / "train.log").read_text()
    with open(resumed / "csv" / "version_1" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert min(steps) >= 3 and max(steps) == 8  # continued at step 3 of epoch 0's 9
    assert "2 of 2 jobs completed" in second.stderr + second.stdout


def test_a_cancelled_record_is_not_overwritten_by_the_jobs_own(tmp_path):
    """sacct says CANCELLED at scancel, so the Slurm launcher may record the job before the job
    itself (still checkpointing, closing its W&B run) writes `interrupted`: `cancelled` stays."""
    from genlab.sweep.status import JobInfo, read_status, write_status

    job = JobInfo(num=1, output_dir=str(tmp_path), sweep_dir=str(tmp_path), overrides=[])
    write_status(tmp_path, job, "running")
    write_status(
        tmp_path,
        job,
        "cancelled",
        error="Slurm job 7_1: CANCELLED by 0.",
        error_type="SlurmCancelled",
        slurm_state="CANCELLED by 0",
    )
    write_status(tmp_path, job, "interrupted", error="Interrupted by SIGTERM at step 12")
    record = read_status(tmp_path)
    assert record["status"] == "cancelled" and record["slurm_state"] == "CANCELLED by 0"
    assert record["error"].endswith("The job itself recorded: Interrupted by SIGTERM at step 12")
    write_status(tmp_path, job, "running")  # the sweep run again: a new attempt
    write_status(tmp_path, job, "interrupted", error="Interrupted by SIGINT")
    assert read_status(tmp_path)["status"] == "interrupted"

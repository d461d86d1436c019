"""Nothing lost: exact resume, interruption, divergence, safe checkpoints, secrets."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import FAST, REPO

from genlab import GenlabError
from genlab.callbacks import TrainingDiverged
from genlab.models.base import STEP_METRICS
from genlab.training import run

SMALL = ["model.mlp.hidden=[64]", "model.latent_dim=4", "test=false", "save_images=false"]
STEPS_PER_EPOCH = 9  # 288 training images, batch 32


def _ckpt(run_dir: Path, name="last.ckpt"):
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def _assert_same_training_state(a: dict, b: dict):
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for sa, sb in zip(
        a["optimizer_states"][0]["state"].values(),
        b["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k


def test_resume_is_bit_identical_to_straight_training(compose, tmp_path):
    straight = run(compose(*SMALL, "trainer.max_epochs=2", run_dir=tmp_path / "straight"))
    run(compose(*SMALL, run_dir=tmp_path / "first"))
    resumed = run(
        compose(
            *SMALL,
            "trainer.max_epochs=2",
            f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}",
            run_dir=tmp_path / "resumed",
        )
    )
    _assert_same_training_state(_ckpt(tmp_path / "straight"), _ckpt(tmp_path / "resumed"))
    for key in ("val/elbo", "val/kl", "val/recon", "train/loss_epoch"):
        assert straight[key] == resumed[key], key


def test_ckpt_path_last_resumes_this_run_dir(compose, tmp_path):
    run_dir = tmp_path / "job"
    run(compose(*SMALL, "ckpt_path=last", run_dir=run_dir))  # nothing yet: starts fresh
    assert _ckpt(run_dir)["global_step"] == STEPS_PER_EPOCH
    run(compose(*SMALL, "ckpt_path=last", "trainer.max_epochs=2", run_dir=run_dir))
    assert _ckpt(run_dir)["global_step"] == 2 * STEPS_PER_EPOCH


def _train_cli(*args, env=None, timeout=300):
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO / "tests"),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def straight_cli_run(data_root, tmp_path_factory):
    """Two uninterrupted epochs through the CLI: the reference for the interrupted runs."""
    run_dir = tmp_path_factory.mktemp("straight")
    result = _train_cli(
        *SMALL,
        *FAST,
        f"paths.data_dir={data_root}",
        "data=mnist",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


@pytest.mark.parametrize(("signum", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_mid_epoch_checkpoints_and_resumes_exactly(
    data_root, tmp_path, straight_cli_run, signum, code
):
    common = [
        *SMALL,
        *FAST,
        f"paths.data_dir={data_root}",
        "data=mnist",
        "trainer.max_epochs=2",
        f"hydra.run.dir={tmp_path / 'a'}",
    ]
    preempt = [
        "+callbacks.preempt._target_=helpers.SelfSignal",
        "+callbacks.preempt.step=13",
        f"+callbacks.preempt.signum={signum}",
    ]
    killed = _train_cli(*common, *preempt)
    assert killed.returncode == code, killed.stderr[-2000:]
    assert f"Interrupted by {signum} at step 13" in killed.stderr
    assert _ckpt(tmp_path / "a")["global_step"] == 13  # mid-epoch 2 (9 steps per epoch)
    # The same command line again, as a requeued job runs it (the signal step is behind it).
    resumed = _train_cli(*common, *preempt, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_training_state(_ckpt(tmp_path / "a"), _ckpt(straight_cli_run))
    # The interrupted epoch's train/* means cover all its batches, before and after the resume:
    # the same numbers, bit for bit, in metrics.csv and metrics.json.
    straight, again = _epoch_rows(straight_cli_run), _epoch_rows(tmp_path / "a")
    assert any(k.startswith("train/") for k in again[1]) and again[1] == straight[1]
    final = {k: v for k, v in _metrics_json(straight_cli_run).items() if k.startswith("train/")}
    assert final and {k: _metrics_json(tmp_path / "a")[k] for k in final} == final


def _epoch_rows(run_dir: Path) -> dict[int, dict[str, float]]:
    """The epoch-level rows of the run's metrics.csv files (all versions: a resumed run writes
    the next one): {epoch: {metric: value}} for train/* and val/* values that are epoch means."""
    import csv

    rows: dict[int, dict[str, float]] = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                means = {
                    k: float(v)
                    for k, v in row.items()
                    if v and k.startswith(("train/", "val/")) and k not in STEP_METRICS
                }
                if means:
                    rows.setdefault(int(row["epoch"]), {}).update(means)
    return rows


def _metrics_json(run_dir: Path) -> dict[str, float]:
    import json

    return json.loads((run_dir / "metrics.json").read_text())


def test_checkpoint_writes_are_atomic(tmp_path):
    from genlab.checkpoints import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        io.save_checkpoint({"global_step": 2, "w": Boom()}, path)
    assert io.load_checkpoint(path)["global_step"] == 1  # the previous checkpoint survives
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["last.ckpt"]


def test_non_finite_loss_stops_with_a_diagnosis(compose, tmp_path):
    cfg = compose(
        *SMALL,
        "trainer.max_epochs=3",
        "+callbacks.poison._target_=helpers.PoisonWeights",
        "+callbacks.poison.step=12",
    )
    with pytest.raises(TrainingDiverged) as err:
        run(cfg)
    message = str(err.value)
    assert "loss is nan at step 12" in message and "epoch 1" in message
    assert "step 11:" in message  # the values just before
    assert "model.optimizer.lr=0.001" in message and "model.beta=1.0" in message
    assert "trainer.precision" not in message  # the run is 32-true already: nothing to try
    kept = _ckpt(tmp_path / "run")
    assert kept["global_step"] == STEPS_PER_EPOCH  # the last good checkpoint, not overwritten
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_code_is_refused_unexecuted(compose, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _RunsCode(marker)}, f)
    with pytest.raises(GenlabError, match="Refusing to load"):
        run(compose(*SMALL, f"ckpt_path={evil}"))
    assert not marker.exists()


def test_checkpoint_of_another_model_is_refused(compose, tmp_path):
    run(compose(*SMALL, "model=ae", run_dir=tmp_path / "ae"))
    with pytest.raises(GenlabError, match="model type of ae.*configured for vae"):
        run(compose(*SMALL, f"ckpt_path={tmp_path / 'ae'}"))  # a run dir works as ckpt_path
    with pytest.raises(GenlabError, match="does not exist"):
        run(compose(*SMALL, f"ckpt_path={tmp_path / 'nope.ckpt'}"))


def test_secrets_never_reach_outputs(data_root, tmp_path):
    secret, wandb_key = "sk-genlab-test-0123456789", "wandbkey-fake-9876543210"
    result = _train_cli(
        *SMALL,
        *FAST,
        f"paths.data_dir={data_root}",
        "data=mnist",
        "logger=[csv,wandb]",
        "logger.wandb.mode=offline",
        f"hydra.run.dir={tmp_path / 'r'}",
        "tags=[${oc.env:MY_SERVICE_TOKEN}]",
        f"+notes={secret}",
        env={"MY_SERVICE_TOKEN": secret, "WANDB_API_KEY": wandb_key},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    files = [p for p in (tmp_path / "r").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.suffix == ".ckpt" for p in files)
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data and wandb_key.encode() not in data, path
    assert secret not in result.stdout + result.stderr
    assert "***" in (tmp_path / "r" / "config.yaml").read_text()


def test_resumed_run_continues_the_same_wandb_run(compose, tmp_path):
    common = [*SMALL, "logger=[csv,wandb]", "logger.wandb.mode=offline"]
    run(compose(*common, run_dir=tmp_path / "first"))
    first = list((tmp_path / "first" / "wandb").glob("offline-run-*"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run(compose(*common, "trainer.max_epochs=2", f"ckpt_path={ckpt}", run_dir=tmp_path / "second"))
    second = list((tmp_path / "second" / "wandb").glob("offline-run-*"))
    assert len(first) == len(second) == 1
    run_id = first[0].name.rsplit("-", 1)[-1]
    assert second[0].name.endswith(f"-{run_id}")  # same W&B run id: the dashboard continues it


def test_sigterm_that_also_kills_the_wandb_service_is_an_interruption(data_root, tmp_path):
    """SIGTERM to the run and its wandb-core at once (Slurm's scancel signals every process of
    the job): wandb-core dies without writing out its buffer (wandb/wandb#9963) and every later
    wandb call raises "Connection lost". The run still stops as an interruption (checkpoint,
    exit 143), and the W&B run is reopened under the same id and closed with its last values,
    its state and exit code 143."""
    from wandb_offline import find_runs, read_run

    run_dir = tmp_path / "r"
    result = _train_cli(
        *SMALL,
        *FAST,
        f"paths.data_dir={data_root}",
        "data=mnist",
        "logger=[csv,wandb]",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",  # the batch after the signal logs into the dead service
        "+callbacks.kill._target_=helpers.SignalWithWandbService",
        "+callbacks.kill.step=12",
        f"hydra.run.dir={run_dir}",
        # Its own wandb-core: an earlier in-process W&B run of this pytest leaves its service's
        # address in WANDB_SERVICE, which a child would connect to instead of starting one.
        env={"OMP_NUM_THREADS": "1", "WANDB_SERVICE": ""},
        timeout=240,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 143, out[-3000:]
    assert "Interrupted by SIGTERM at step 12" in out
    assert "Traceback" not in out, out[-3000:]
    assert "Reopened the run in a new service" in out and "wandb/wandb#9963" in out
    ckpt = _ckpt(run_dir)
    assert ckpt["global_step"] == 12
    run_id = ckpt["callbacks"]["RunIdentity"]["wandb_run_id"]

    runs = [read_run(f) for f in find_runs(run_dir / "wandb")]
    assert all(r.id in ("", run_id) for r in runs)  # the first segment may hold its header only
    closed = [r for r in runs if r.id == run_id and r.exit_code is not None]
    assert len(closed) == 1, [(r.path, r.id, r.exit_code) for r in runs]
    (closed,) = closed
    assert closed.exit_code == 128 + 15
    summary = closed.summary
    assert summary["genlab/status"] == "interrupted" and summary["genlab/signal"] == "SIGTERM"
    assert summary["genlab/exit_code"] == 143
    # The last values genlab logged: epoch 0's validation, step 12's loss (logged after the
    # service had died), as metrics.csv has them.
    assert summary["trainer/global_step"] == 11  # Lightning logs step s's loss at s - 1
    csv_rows = list(_csv_rows(run_dir))
    last_loss = [float(r["train/loss_step"]) for r in csv_rows if r.get("train/loss_step")][-1]
    assert summary["train/loss_step"] == pytest.approx(last_loss)
    val = [float(r["val/elbo"]) for r in csv_rows if r.get("val/elbo")][-1]
    assert summary["val/elbo"] == pytest.approx(val)
    assert closed.config["model"]["latent_dim"] == 4  # the run config, written again


def _csv_rows(run_dir: Path):
    import csv

    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with open(path) as f:
            yield from csv.DictReader(f)


def test_last_checkpoint_follows_every_epoch_not_only_improvements(compose, tmp_path):
    # mode=max makes every later (lower-loss) epoch "worse", so Lightning's ModelCheckpoint keeps
    # epoch 0 as best; last.ckpt must still be the latest epoch.
    run(compose(*SMALL, "trainer.max_epochs=2", "callbacks.model_checkpoint.mode=max"))
    assert _ckpt(tmp_path / "run")["global_step"] == 2 * STEPS_PER_EPOCH
    best = list((tmp_path / "run" / "checkpoints").glob("epoch=*.ckpt"))
    assert [p.name for p in best] == [f"epoch=000-step={STEPS_PER_EPOCH}.ckpt"]

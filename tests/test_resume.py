"""Resume with other settings (issue 14): refused by name before anything is loaded or written,
or applied for real and recorded with resume_changes=allow."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import FAST, REPO

from genlab import GenlabError
from genlab.training import run

SMALL = ["model.mlp.hidden=[64]", "model.latent_dim=4", "test=false", "save_images=false"]
CHANGED = [
    "model.optimizer.lr=0.5",
    "model.beta=2.0",
    "data.batch_size=16",
    "trainer.gradient_clip_val=1.0",
    "seed=3",
]
LISTED = [
    "model.optimizer.lr: 0.001 -> 0.5",
    "model.beta: 1.0 -> 2.0",
    "data.batch_size: 32 -> 16",
    "trainer.gradient_clip_val: None -> 1.0",
    "seed: 0 -> 3",
]


def _ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run dir but the lock, which names whichever process held it last."""
    files = (p for p in run_dir.rglob("*") if p.is_file() and p.name != ".genlab.lock")
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


def test_resume_with_changed_settings_is_refused_before_anything_is_written(data_root, tmp_path):
    run_dir = tmp_path / "job"
    common = [*SMALL, *FAST, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "WANDB_MODE": "offline"}
    cli = [sys.executable, str(REPO / "train.py"), *common]
    first = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _snapshot(run_dir)
    resumed = [*cli, "ckpt_path=last", "trainer.max_epochs=2", "eval.iwae_k=7", *CHANGED]
    refused = subprocess.run(resumed, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    message = refused.stderr.strip()
    assert message.startswith("genlab: error: Resuming") and "\n" not in message
    for change in LISTED:
        assert change in message, change
    assert "resume_changes=allow" in message and "Drop those overrides" in message
    # How long the run goes and how it is observed may change: not listed.
    assert "max_epochs: " not in message and "iwae_k" not in message
    assert _snapshot(run_dir) == before  # nothing loaded into the run, nothing written


def test_refusal_of_an_older_checkpoint_uses_its_model_keys_and_config_yaml(compose, tmp_path):
    run(compose(*SMALL))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    old = _ckpt(tmp_path / "run")
    del old["genlab_config"]  # as genlab wrote them before the config was kept in checkpoints
    torch.save(old, ckpt)
    with pytest.raises(GenlabError) as err:
        run(compose(*SMALL, "ckpt_path=last", "trainer.max_epochs=2", *CHANGED))
    assert all(change in str(err.value) for change in LISTED)
    (tmp_path / "run" / "config.yaml").unlink()  # only the model keys are left to compare
    with pytest.raises(GenlabError) as err:
        run(compose(*SMALL, "ckpt_path=last", "trainer.max_epochs=2", *CHANGED))
    assert "model.optimizer.lr: 0.001 -> 0.5" in str(err.value)
    assert "data.batch_size" not in str(err.value)


def test_resume_changes_allow_applies_the_new_lr_and_records_it(compose, tmp_path, caplog):
    common = [*SMALL, "scheduler=warmup_cosine", "scheduler.warmup_steps=0"]
    run(compose(*common, run_dir=tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    # Unchanged settings, but other free keys: the reference schedule.
    free = ["trainer.max_epochs=2", "trainer.log_every_n_steps=3", "eval.iwae_k=7", "test=false"]
    run(
        compose(
            *common, *free, "trainer.limit_val_batches=1", "ckpt_path=last", run_dir=tmp_path / "a"
        )
    )
    changed = ["model.optimizer.lr=0.5", "model.optimizer.weight_decay=0.01"]
    with caplog.at_level("WARNING", logger="genlab"):
        run(
            compose(
                *common,
                "trainer.max_epochs=2",
                "ckpt_path=last",
                "resume_changes=allow",
                *changed,
                run_dir=tmp_path / "b",
            )
        )
    assert (
        "resume_changes=allow" in caplog.text and "model.optimizer.lr: 0.001 -> 0.5" in caplog.text
    )
    same, new = _ckpt(tmp_path / "a"), _ckpt(tmp_path / "b")
    assert new["global_step"] == same["global_step"] == 18
    group, reference = (
        new["optimizer_states"][0]["param_groups"][0],
        same["optimizer_states"][0]["param_groups"][0],
    )
    # The restored optimizer trained with the new values, on the same schedule (cosine factor).
    assert group["initial_lr"] == 0.5 and group["weight_decay"] == 0.01
    assert group["lr"] / 0.5 == pytest.approx(reference["lr"] / 1e-3, rel=1e-9)
    assert new["lr_schedulers"][0]["base_lrs"] == [0.5]
    assert not all(
        torch.equal(new["state_dict"][k], same["state_dict"][k]) for k in same["state_dict"]
    )
    # Every record says what was used: the checkpoint's hparams and config, config.yaml.
    assert new["hyper_parameters"]["optimizer"]["lr"] == 0.5
    assert new["genlab_config"]["model"]["optimizer"]["lr"] == 0.5
    recorded = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert recorded["model"]["optimizer"] == {**recorded["model"]["optimizer"], "lr": 0.5}
    assert recorded["resume_changes"] == "allow"


def test_changes_that_cannot_apply_are_refused_by_name(compose, tmp_path):
    run(compose(*SMALL))
    resume = [*SMALL, "ckpt_path=last", "trainer.max_epochs=2", "resume_changes=allow"]
    with pytest.raises(GenlabError, match="cannot change model.optimizer._target_"):
        run(compose(*resume, "model.optimizer._target_=torch.optim.AdamW"))
    with pytest.raises(
        GenlabError,
        match=r"weights do not fit .*head.weight: \[8, 64\] in the checkpoint, \[16, 64\]",
    ):
        run(compose(*resume, "model.latent_dim=8"))
    with pytest.raises(GenlabError, match="resume_changes='maybe'"):
        run(compose(*SMALL, "resume_changes=maybe"))


def test_only_keys_of_length_and_observation_change_freely():
    from genlab.checkpoints import config_changes

    trained = {
        "seed": 0,
        "trainer": {"max_epochs": 1, "val_check_interval": None, "precision": "32-true"},
        "speed": {"compile": False},
        "data": {"batch_size": 32, "eval_batch_size": 64},
        "callbacks": {
            "model_checkpoint": {
                "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                "mode": "min",
            },
            "slurm_preemption": None,
        },
        "model": {"optimizer": {"lr": 1e-3}, "iwae_k_test": 50},
    }
    free = {
        **trained,
        "trainer": {**trained["trainer"], "max_epochs": 5, "val_check_interval": 0.5},
        "speed": {"compile": True},
        "data": {**trained["data"], "eval_batch_size": 512},
        "callbacks": {
            "model_checkpoint": {**trained["callbacks"]["model_checkpoint"], "mode": "max"},
            "slurm_preemption": {"_target_": "genlab.sweep.preemption.StopOnRequeueSignal"},
        },
        "model": {**trained["model"], "iwae_k_test": 5000},
    }
    assert config_changes(trained, True, free) == []
    changed = {
        **free,
        "trainer": {**free["trainer"], "precision": "bf16-mixed"},
        "callbacks": {**free["callbacks"], "swa": {"_target_": "my.WeightChanger"}},
        "model": {**free["model"], "optimizer": {"lr": 0.5}},
    }
    assert config_changes(trained, True, changed) == [
        "callbacks.swa._target_: (absent) -> my.WeightChanger",
        "model.optimizer.lr: 0.001 -> 0.5",
        "trainer.precision: 32-true -> bf16-mixed",
    ]

"""`debug=` presets (conf/debug/) and the early-stopping preset compose and run a tiny run."""

import json

import pytest
import torch

from genlab.training import run

SMALL = ["model.mlp.hidden=[32]", "model.latent_dim=2", "model.iwae_k_val=0", "model.iwae_k_test=0"]


@pytest.mark.parametrize(
    ("option", "trainer"),
    [
        ("fast", {"fast_dev_run": True}),
        ("overfit", {"overfit_batches": 1, "max_epochs": 100}),
        # (the tests' trainer.max_epochs=1, a command-line override, wins over the preset's 2)
        ("limit", {"limit_train_batches": 5, "limit_val_batches": 2, "max_epochs": 1}),
    ],
)
def test_debug_option_composes_and_runs(compose, tmp_path, option, trainer):
    extra = ["trainer.max_epochs=3"] if option == "overfit" else []  # keep the test short
    cfg = compose(*SMALL, f"debug={option}", *extra)
    assert {k: cfg.trainer[k] for k in trainer} == {
        **trainer,
        **({"max_epochs": 3} if extra else {}),
    }
    metrics = run(cfg)
    assert metrics and all(v == v for v in metrics.values())  # finished, no NaN
    if option == "limit":  # a real short run: checkpoints, test metrics, metrics.json
        assert "test/loss" in json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_early_stopping_preset_stops_the_run(compose, tmp_path):
    cfg = compose(
        *SMALL,
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1e9",  # no improvement can count: stop at once
        "trainer.max_epochs=5",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "test=false",
        "save_images=false",
    )
    assert cfg.callbacks.model_checkpoint.monitor == cfg.callbacks.early_stopping.monitor
    from lightning.pytorch.callbacks import EarlyStopping

    from genlab.builders import build_callbacks, build_model, callback_plan

    assert any(
        isinstance(c, EarlyStopping)
        for c in build_callbacks(callback_plan(cfg, build_model(cfg).capabilities))
    )
    run(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4  # 2 of 5 epochs of 2 batches: stopped by patience=1

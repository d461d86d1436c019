"""A non-finite validation or test metric stops a run like a non-finite training loss (issue 14,
item 4): the same TrainingDiverged, message style and exit code, and no checkpoint of the bad
validation is written or marked best."""

import pytest
import torch
from fixtures import FAST
from omegaconf import open_dict
from test_robustness import SMALL, STEPS_PER_EPOCH, _ckpt, _train_cli

from genlab.callbacks import TrainingDiverged
from genlab.training import run

POISON = ["+callbacks.poison._target_=helpers.PoisonValidation", "+callbacks.poison.epoch=1"]


def test_non_finite_validation_loss_stops_the_run_and_marks_nothing_best(compose, tmp_path):
    with pytest.raises(TrainingDiverged) as err:
        run(compose(*SMALL, "trainer.max_epochs=3", *POISON))
    message = str(err.value)
    assert message.startswith("Validation diverged: ") and "val/loss=nan" in message
    assert f"at step {2 * STEPS_PER_EPOCH} (epoch 1, evaluation)" in message
    assert f"step {2 * STEPS_PER_EPOCH - 1}:" in message  # the training losses just before
    assert "model.beta=1.0" in message and "model.optimizer.lr=0.001" in message
    assert "trainer.precision" not in message  # already 32-true: nothing to suggest
    folder = tmp_path / "run" / "checkpoints"
    best = f"epoch=000-step={STEPS_PER_EPOCH}.ckpt"
    assert sorted(p.name for p in folder.iterdir()) == [best, "last.ckpt"]
    # Both are epoch 0's: nothing was written (or marked best) after the bad validation.
    for name in (best, "last.ckpt"):
        kept = _ckpt(tmp_path / "run", name)
        assert kept["global_step"] == STEPS_PER_EPOCH, name
        assert all(torch.isfinite(v).all() for v in kept["state_dict"].values()), name


def test_non_finite_test_metric_stops_the_run(compose):
    cfg = compose(*SMALL, "test=true", *POISON[:1], "+callbacks.poison.epoch=0")
    with open_dict(cfg):
        cfg.callbacks.poison.test = True
    with pytest.raises(TrainingDiverged, match=r"^Testing diverged: .*test/loss=nan"):
        run(cfg)


def test_validation_divergence_exits_like_training_divergence(data_root, tmp_path):
    common = [*SMALL, *FAST, f"paths.data_dir={data_root}", "data=mnist"]
    bad_val = _train_cli(*common, "trainer.max_epochs=2", *POISON, f"hydra.run.dir={tmp_path}/v")
    bad_train = _train_cli(
        *common,
        "+callbacks.poison._target_=helpers.PoisonWeights",
        "+callbacks.poison.step=3",
        f"hydra.run.dir={tmp_path}/t",
    )
    assert bad_val.returncode == bad_train.returncode == 2, bad_val.stderr[-2000:]
    assert "genlab: error: Validation diverged: " in bad_val.stderr
    assert "val/loss=nan" in bad_val.stderr
    assert "genlab: error: Training diverged" in bad_train.stderr
    assert "Traceback" not in bad_val.stderr + bad_train.stderr

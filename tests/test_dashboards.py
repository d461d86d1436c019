"""What the dashboards receive, read back from the files the loggers wrote: image pixels (W&B
media, TensorBoard events), the logged hyperparameters, and the step/epoch/lr series in the CSV."""

import csv
import io
import json
from typing import ClassVar

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from fixtures import TINY_DDPM
from PIL import Image
from wandb_offline import read_run

from genlab.loggers import finish_loggers
from genlab.training import run
from genlab.viz.grids import log_images, make_grid

SMALL = ["model.mlp.hidden=[64]", "model.latent_dim=4"]
TINY_DDPM_RUN = [
    *TINY_DDPM,
    "model.ema_decay=null",
]
# 8-bit quantisation by rounding: a pixel is at most half a level away from the value sent.
HALF_LEVEL = 0.5 / 255 + 1e-6


def _known_images() -> torch.Tensor:
    """Four RGB images spread over the whole [0, 1] range (random values plus a ramp)."""
    images = torch.rand(4, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    images[0] = torch.linspace(0, 1, 10).expand(3, 12, 10)
    return images


def _as_floats(png: Image.Image) -> np.ndarray:
    return np.asarray(png.convert("RGB"), dtype=np.float64) / 255


def _assert_same_picture(got: np.ndarray, images: torch.Tensor, nrow: int) -> None:
    sent = make_grid(images, nrow).permute(1, 2, 0).numpy()  # the grid log_images sends
    assert got.shape == sent.shape
    assert np.abs(got - sent).max() <= HALF_LEVEL
    assert got.std() > 0.1  # a real picture, not a constant (black) one


def test_wandb_receives_the_grid_pixels(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="genlab", name="pixels", save_dir=str(tmp_path), offline=True)
    images = _known_images()
    log_images([logger], "val/samples", images, step=7, nrow=2)
    finish_loggers([logger])

    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    rows = [row for row in read_run(run_dir).history if "val/samples/filenames" in row]
    assert len(rows) == 1 and rows[0]["trainer/global_step"] == 7
    (name,) = rows[0]["val/samples/filenames"]
    _assert_same_picture(_as_floats(Image.open(run_dir / "files" / name)), images, nrow=2)


def test_tensorboard_receives_the_grid_pixels(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb", default_hp_metric=False)
    images = _known_images()
    log_images([logger], "val/samples", images, step=7, nrow=2)
    logger.experiment.flush()

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    (event,) = events.Images("val/samples")
    assert event.step == 7
    picture = Image.open(io.BytesIO(event.encoded_image_string))
    _assert_same_picture(_as_floats(picture), images, nrow=2)


def test_logged_hparams_keep_the_run_name_and_the_model_type(compose, tmp_path):
    cfg = compose(*SMALL, "logger=[csv,wandb]", "test=false", "save_images=false")
    assert cfg.name != cfg.model.name  # the two names the loggers used to mix up
    run(cfg)
    out = tmp_path / "run"

    hparams = yaml.safe_load((out / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams["name"] == cfg.name
    assert hparams["model"]["name"] == cfg.model.name
    wandb_run = read_run(out / "wandb")
    assert wandb_run.config["name"] == cfg.name == wandb_run.name
    assert wandb_run.config["model"]["name"] == cfg.model.name
    # Checkpoints keep the model's own hyperparameters: genlab.sample picks the class by name.
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["name"] == cfg.model.name

    # The previews this run sent to W&B are real pictures (they used to be black).
    run_dir = next((out / "wandb").glob("offline-run-*"))
    names = [n for row in wandb_run.history for n in row.get("val/samples/filenames", [])]
    assert names
    for name in names:
        pixels = _as_floats(Image.open(run_dir / "files" / name))
        assert pixels.max() > 0.5 and pixels.std() > 0.05


class StepRecorder(pl.Callback):
    """Each training step's loss and learning rate, keyed by the step they belong to."""

    losses: ClassVar[dict[int, float]] = {}
    lrs: ClassVar[dict[int, float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step
        StepRecorder.lrs[self.step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        StepRecorder.losses[self.step] = float(outputs["loss"])


@pytest.fixture
def recorded(compose, tmp_path):
    """recorded(*overrides) -> (cfg, returned metrics, metrics.json, metrics.csv rows) of a
    one-epoch run logging every 2 steps, with StepRecorder's record of every step."""

    def _run(*overrides):
        StepRecorder.losses.clear()
        StepRecorder.lrs.clear()
        cfg = compose(
            *overrides,
            "trainer.log_every_n_steps=2",
            "+callbacks.recorder._target_=test_dashboards.StepRecorder",
            "test=false",
            "save_images=false",
        )
        metrics = run(cfg)
        out = tmp_path / "run"
        with open(out / "csv" / "version_0" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        return cfg, metrics, json.loads((out / "metrics.json").read_text()), rows

    return _run


def test_step_loss_rows_carry_the_loss_of_their_step(recorded):
    cfg, metrics, saved, rows = recorded(*SMALL)
    every = cfg.trainer.log_every_n_steps
    steps = sorted(StepRecorder.losses)
    assert len(steps) > 2 * every
    logged = {int(r["step"]): float(r["train/loss_step"]) for r in rows if r["train/loss_step"]}
    # Lightning writes step values where (step + 1) % every == 0: every such step has its row.
    assert sorted(logged) == [s for s in steps if (s + 1) % every == 0]
    for step, value in logged.items():
        assert value == pytest.approx(StepRecorder.losses[step], rel=1e-6), step

    # The final records: the epoch mean under its own name, no single-step value beside it.
    (epoch_row,) = [r for r in rows if r["train/loss_epoch"]]
    mean = sum(StepRecorder.losses.values()) / len(steps)  # equal batches: a plain mean
    assert float(epoch_row["train/loss_epoch"]) == pytest.approx(mean, rel=1e-5)
    assert saved == metrics and saved["train/loss_epoch"] == pytest.approx(mean, rel=1e-5)
    assert not {"train/loss", "train/loss_step", "train/lr"} & set(saved)
    # A model without a learning-rate schedule logs no learning rate at all.
    assert not [key for key in [*rows[0], *saved] if "lr" in key.split("/")[-1]]


def test_scheduled_learning_rate_is_logged_per_step(recorded):
    cfg, metrics, saved, rows = recorded(*TINY_DDPM_RUN, "data=mnist")
    every = cfg.trainer.log_every_n_steps
    logged = {int(r["step"]): float(r["train/lr"]) for r in rows if r["train/lr"]}
    assert sorted(logged) == [s for s in sorted(StepRecorder.lrs) if (s + 1) % every == 0]
    for step, value in logged.items():
        assert value == pytest.approx(StepRecorder.lrs[step], rel=1e-6), step
    assert len(set(logged.values())) == len(logged)  # the warm-up: it changes at every point
    assert not [key for key in rows[0] if key.startswith("lr-")]
    assert "train/lr" not in saved

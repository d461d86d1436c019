"""What the dashboards receive, read back from the files the loggers wrote: image pixels (W&B
media, TensorBoard events), the logged hyperparameters, and the step/epoch/lr series in the CSV."""

import io

import numpy as np
import torch
from PIL import Image

from genlab.loggers import finish_loggers
from genlab.sweep.wandb_offline import read_run
from genlab.viz.grids import log_images, make_grid

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

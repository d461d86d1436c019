"""Image grids: one function builds them, one writes PNGs, one sends them to the loggers."""

from __future__ import annotations

import math
from pathlib import Path

import torch

GRID_COLUMNS = 8  # columns of a grid with no class order (and of reconstruction pairs)


def sample_grid_shape(
    rows: int, classes: int | None = None, columns: int = GRID_COLUMNS
) -> tuple[int, int]:
    """The one layout of a grid of samples, on every path (training's samples.png, previews,
    `sample.py task=samples`): (image count, columns) of `rows` full rows, no blank cell.
    Samples whose labels cycle over the classes (label i % classes) get one class per column:
    `classes` columns; others `columns`."""
    width = classes or columns
    return max(1, rows) * width, width


def originals_above_reconstructions(
    originals: torch.Tensor, reconstructions: torch.Tensor, per_row: int = GRID_COLUMNS
) -> torch.Tensor:
    """Interleave rows: `per_row` originals, then their reconstructions right below, and so on."""
    n = len(originals) - len(originals) % per_row or len(originals)
    per_row = min(per_row, n)
    rows = torch.stack(
        [
            originals[:n].view(-1, per_row, *originals.shape[1:]),
            reconstructions[:n].view(-1, per_row, *originals.shape[1:]).to(originals.dtype),
        ],
        dim=1,
    )
    return rows.reshape(-1, *originals.shape[1:])


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """[N, C, H, W] images in [0, 1] -> one [3, H', W'] image (nrow defaults to a square)."""
    from torchvision.utils import make_grid as tv_make_grid

    images = images.detach().float().clamp(0, 1).cpu()
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    return tv_make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write images as one PNG grid, atomically (a reader never sees a half-written file)."""
    from torchvision.utils import save_image

    from genlab.atomic import replace_atomically

    grid = make_grid(images, nrow)
    return replace_atomically(path, lambda tmp: save_image(grid, tmp, format="PNG"))


def shows_images(loggers) -> bool:
    """Whether any logger displays images (so previews are worth computing)."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    return any(isinstance(lg, TensorBoardLogger | WandbLogger) for lg in loggers)


def to_uint8(grid: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] -> uint8 in [0, 255], rounded to the nearest level as `save_grid`'s PNGs
    are. Loggers get these bytes, not floats: wandb 0.31 stores a float array as it is, so
    [0, 1] became the levels 0 and 1 of 255 (a black picture), and TensorBoard truncates."""
    return grid.float().clamp(0, 1).mul(255).round().to(torch.uint8)


def log_images(
    loggers, key: str, images: torch.Tensor, step: int, nrow: int | None = None
) -> torch.Tensor:
    """Send a grid to every logger that shows images (TensorBoard, W&B); CSV ignores it.
    Returns the grid's uint8 [3, H, W] pixels, the ones sent (what `write_preview` writes)."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    pixels = to_uint8(make_grid(images, nrow))  # [3, H, W]
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, pixels, global_step=step, dataformats="CHW")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[pixels.permute(1, 2, 0).numpy()], step=step)
    return pixels


def write_preview(pixels: torch.Tensor, folder: Path, epoch: int, name: str, keep: int) -> Path:
    """<folder>/epoch=NNN-<name>.png from uint8 [3, H, W] pixels (lossless PNG: the file holds
    exactly the logged bytes), atomically; then only the `keep` newest epochs' files of `name`
    stay (older ones are deleted)."""
    from PIL import Image

    from genlab.atomic import replace_atomically

    path = folder / f"epoch={epoch:03d}-{name}.png"
    image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
    replace_atomically(path, lambda tmp: image.save(tmp, format="PNG"))
    written = sorted(folder.glob(f"epoch=*-{name}.png"), key=lambda p: _epoch_of(p.name))
    for old in written[: max(0, len(written) - keep)]:
        old.unlink(missing_ok=True)
    return path


def _epoch_of(filename: str) -> int:
    digits = filename.removeprefix("epoch=").split("-", 1)[0]
    return int(digits) if digits.isdigit() else -1


def rows_of_columns(columns) -> torch.Tensor:
    """Columns of [n, C, H, W] images -> [n * k, C, H, W] in row-major order, so that
    make_grid(..., nrow=k) shows row i as image i of every column (a strip through time)."""
    return torch.stack([c.detach().float().cpu() for c in columns], dim=1).flatten(0, 1)

"""Shared fixtures: small datasets written in the genuine on-disk formats, and configs composed
from the real conf/ through Hydra's compose API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genlab.data.formats import write_cifar10, write_idx

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

# Small split sizes keep every test fast while leaving a few batches per epoch.
N_TRAIN, N_TEST = 320, 96


def class_images(n: int, shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images that carry their class: a per-class random template plus noise, as uint8 NHWC."""
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(1234).random((10, *shape)) > 0.6
    labels = rng.integers(0, 10, size=n)
    noise = rng.normal(0, 25, size=(n, *shape))
    images = np.clip(templates[labels] * 200 + 25 + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def write_mnist_family(folder: Path, gz: bool = False) -> None:
    """The four IDX files of MNIST / Fashion-MNIST in `folder` (optionally gzipped)."""
    suffix = ".gz" if gz else ""
    for split, n, seed in (("train", N_TRAIN, 0), ("t10k", N_TEST, 1)):
        images, labels = class_images(n, (28, 28, 1), seed)
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images[..., 0])
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data dir laid out as torchvision expects, holding tiny MNIST, Fashion-MNIST, CIFAR-10."""
    root = tmp_path_factory.mktemp("data")
    write_mnist_family(root / "MNIST" / "raw")
    write_mnist_family(root / "FashionMNIST" / "raw")
    train = class_images(N_TRAIN, (32, 32, 3), 2)
    test = class_images(N_TEST, (32, 32, 3), 3)
    write_cifar10(root, train, test)
    return root


# A DDPM small enough for tests: T=50, an 8-channel two-level U-Net.
TINY_DDPM = [
    "model=ddpm",
    "model.timesteps=50",
    "model.sample_steps=10",
    "model.unet.base_channels=8",
    "model.unet.channel_mults=[1,2]",
    "model.unet.num_res_blocks=1",
]

FAST = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "data.download=false",
    "data.system_dirs=[]",
    "eval.num_samples=64",
    "eval.kid_subset_size=32",
]


@pytest.fixture
def compose(data_root, tmp_path):
    """compose(*overrides) -> the real composed config, writing into a fresh tmp run dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import genlab.resolvers  # noqa: F401

    def _compose(*overrides: str, run_dir: Path | None = None):
        run_dir = run_dir or tmp_path / "run"
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return hydra_compose(
                "train",
                overrides=[
                    f"paths.data_dir={data_root}",
                    f"paths.output_dir={run_dir}",
                    *FAST,
                    *overrides,
                ],
            )

    return _compose


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    # Tests never talk to W&B servers and never pick up a developer's key.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)


def write_inverted_mnist_family(folder: Path) -> None:
    """The IDX files of `write_mnist_family` with every image inverted (255 - x): the same shape
    and labels but clearly another distribution (bright backgrounds), for anomaly detection."""
    for split, n, seed in (("train", N_TRAIN, 0), ("t10k", N_TEST, 1)):
        images, labels = class_images(n, (28, 28, 1), seed)
        write_idx(folder / f"{split}-images-idx3-ubyte", 255 - images[..., 0])
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels)

"""Shared test constants and synthetic-data writers, importable by name (`from fixtures import
FAST`): pyproject's `pythonpath = ["tests"]` puts this folder on sys.path. conftest.py holds only
pytest fixtures; importing conftest directly would load it twice under two module names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genlab.data.formats import write_idx

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

# Small split sizes keep every test fast while leaving a few batches per epoch.
N_TRAIN, N_TEST = 320, 96

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


def write_inverted_mnist_family(folder: Path) -> None:
    """The IDX files of `write_mnist_family` with every image inverted (255 - x): the same shape
    and labels but clearly another distribution (bright backgrounds), for anomaly detection."""
    for split, n, seed in (("train", N_TRAIN, 0), ("t10k", N_TEST, 1)):
        images, labels = class_images(n, (28, 28, 1), seed)
        write_idx(folder / f"{split}-images-idx3-ubyte", 255 - images[..., 0])
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels)


def compose_run(data_root, run_dir, *overrides: str):
    """The real composed train config of a test run into `run_dir` on the tiny data files, FAST
    (the `compose` fixture's config, for module-scoped fixtures too)."""
    from hydra import compose, initialize_config_dir

    import genlab.resolvers  # noqa: F401

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[f"paths.data_dir={data_root}", f"paths.output_dir={run_dir}", *FAST,
                       *overrides],
        )  # fmt: skip


def assert_no_import_cycle(graph) -> None:
    """Depth-first search of a module -> imported modules graph; an AssertionError naming the
    first cycle found (modules visited in order of name)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])

"""One LightningDataModule for every image dataset genlab knows.

Each split lives in memory as a single uint8 tensor [N, C, H, W] (47 MB for the MNIST family,
150 MB for CIFAR-10), on the GPU when training on one. A batch is one fancy-indexing call on that
tensor: no per-image __getitem__, no PIL decoding, no worker processes. Conversion to float and
augmentation happen per batch, on the device, in `on_after_batch_transfer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import lightning.pytorch as pl
import torch

from genlab import GenlabError
from genlab.data.sources import IN_SPLIT_ORDER, identity, load_split


def data_config(name: str, data_dir=None):
    """The data config `python train.py data=NAME` would use, composed from conf/ (also from
    inside a running Hydra app, e.g. `python sample.py`)."""
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf

    from genlab.composition import CONF_DIR, compose

    overrides = [f"data={name}"] + ([f"paths.data_dir={data_dir}"] if data_dir else [])
    try:
        cfg = compose("train", overrides)
    except MissingConfigException:
        known = sorted(p.stem for p in (CONF_DIR / "data").glob("[!_]*.yaml"))
        raise GenlabError(f"Unknown dataset {name!r}: choose one of {', '.join(known)}.") from None
    return OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))


class InMemoryBatches:
    """Iterable of (images, labels) batches cut from in-memory tensors.

    With `shuffle`, epoch e uses a permutation drawn from (seed, e) alone, so the data order is
    repeatable and a resumed run sees the same order. With several ranks each takes a disjoint,
    equally long share of that permutation (training must step in lockstep); evaluation shards
    are disjoint and unpadded, so metrics over all ranks count every image exactly once.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch_fn: Callable[[], int] = lambda: 0,
        progress_fn: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch_fn, self.progress_fn = epoch_fn, progress_fn
        self.rank, self.world_size = rank, world_size
        self._resume: dict | None = None

    # Lightning saves these with checkpoints (its `_Stateful` protocol): a run interrupted
    # mid-epoch resumes at the next unseen batch of the same permutation.
    def state_dict(self) -> dict:
        return {"epoch": self.epoch_fn(), "batches_done": self.progress_fn()}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)

    def indices(self) -> torch.Tensor:
        n = len(self.images)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch_fn())
            order = torch.randperm(n, generator=generator)
            order = order[: n - n % self.world_size]
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size].to(self.images.device)

    def __len__(self) -> int:
        n = len(self.images)
        share = n // self.world_size if self.shuffle else len(range(self.rank, n, self.world_size))
        return math.ceil(share / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices()
        skip, self._resume = self._resume, None
        first = 0
        if skip is not None and skip["epoch"] == self.epoch_fn():
            first = skip["batches_done"] * self.batch_size
        for start in range(first, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.images[idx], self.labels[idx]


class ImageDataModule(pl.LightningDataModule):
    """Train/val/test splits of MNIST, Fashion-MNIST, CIFAR-10 or an image folder as uint8
    tensors (an image folder's memory-mapped from its cache, genlab.data.folder).

    What other code may read: `splits[name]` = (images, labels) for "train", "val", "test"
    after `setup`; `image_shape`, `num_classes`, `labelled` (two classes or more: a domain
    classifier can be trained), `dataset_id` (the name caches of this data go by) and
    `class_names` (None where genlab knows none)."""

    def __init__(
        self,
        name: str,
        root: str,
        image_shape: Sequence[int],
        num_classes: int,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        seed: int | None = 0,
        download: bool = True,
        on_device: str | bool = "auto",
        hflip: bool = False,
        system_dirs: Sequence[str] = (),
        binarize: str | None = None,
        # The dataset's own keys, for its loader (image_folder: path, image_size, channels,
        # resize, test_fraction), and keys only models read (likelihood, default_arch).
        **source_options,
    ):
        super().__init__()
        self.name, self.root = name, root
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = num_classes
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        self.download, self.on_device, self.hflip = download, on_device, hflip
        self.system_dirs = list(system_dirs)
        if binarize not in (None, "dynamic", "static"):
            raise GenlabError(
                f"Invalid config: data.binarize='{binarize}'. It must be null, dynamic or static."
            )
        self.binarize = binarize
        self.source_options = source_options
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._identity: dict | None = None

    @classmethod
    def from_name(cls, name: str, data_dir, **overrides) -> ImageDataModule:
        """The data module `python train.py data=NAME` builds, for tools outside training."""
        from omegaconf import OmegaConf

        spec = OmegaConf.to_container(data_config(name, data_dir), resolve=True)
        spec.pop("_target_")
        return cls(seed=0, **{**spec, **overrides})

    # -- loading -------------------------------------------------------------------------------
    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = load_split(
            self.name,
            self.root,
            train=train,
            system_dirs=self.system_dirs,
            download=self.download,
            split_seed=self.split_seed,
            val_fraction=self.val_fraction,
            **self.source_options,
        )
        if tuple(images.shape[1:]) != self.image_shape:
            raise GenlabError(
                f"data.image_shape is {list(self.image_shape)} but the {self.name} files hold "
                f"images of shape {list(images.shape[1:])}: remove the data.image_shape override."
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise GenlabError(
                f"{self.name} labels span {labels.min()}..{labels.max()}, outside "
                f"0..{self.num_classes - 1} (data.num_classes={self.num_classes})."
            )
        return images, labels

    def prepare_data(self) -> None:
        # Finds, stages or downloads the files once per node; fails early with a clear message.
        self._load(train=True)
        self._load(train=False)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and "train" not in self.splits:
            images, labels = self._load(train=True)
            n_val = int(round(len(images) * self.val_fraction))
            if self.name in IN_SPLIT_ORDER:  # views: memory-mapped rows stay on disk
                val, train = slice(0, n_val), slice(n_val, None)
            else:
                order = torch.randperm(
                    len(images), generator=torch.Generator().manual_seed(self.split_seed)
                )
                val, train = order[:n_val], order[n_val:]
            self.splits["train"] = (images[train], labels[train])
            self.splits["val"] = (images[val], labels[val])
        if stage in (None, "test", "predict") and "test" not in self.splits:
            self.splits["test"] = self._load(train=False)
        if self.binarize:
            # Binarised once with a per-split seed; re-binarising 0/255 data changes nothing.
            fixed = ("train", "val", "test") if self.binarize == "static" else ("val", "test")
            for i, split in enumerate(fixed):
                if split in self.splits:
                    x, y = self.splits[split]
                    rng = torch.Generator().manual_seed(self.split_seed + 1 + i)
                    on = torch.rand(x.shape, generator=rng) < x.float() / 255
                    self.splits[split] = (on.to(torch.uint8) * 255, y)
        device = self._storage_device()
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}

    def _storage_device(self) -> torch.device:
        trainer_device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        if self.on_device == "auto" and trainer_device.type == "cuda":
            # A (memory-mapped) set that would take over a quarter of the GPU stays on the CPU.
            size = sum(x.nelement() for x, _ in self.splits.values())
            if size > torch.cuda.get_device_properties(trainer_device).total_memory // 4:
                return torch.device("cpu")
        if self.on_device is True or (self.on_device == "auto" and trainer_device.type == "cuda"):
            return trainer_device
        return torch.device("cpu")

    # -- what the data is ----------------------------------------------------------------------
    @property
    def labelled(self) -> bool:
        return self.num_classes >= 2

    @property
    def dataset_id(self) -> str:
        return self._identify()["id"]

    @property
    def class_names(self) -> list[str] | None:
        return self._identify()["classes"]

    def _identify(self) -> dict:
        if self._identity is None:
            self._identity = identity(
                self.name, self.root, split_seed=self.split_seed, **self.source_options
            )
        return self._identity

    # -- batches -------------------------------------------------------------------------------
    def _batches(self, split: str, batch_size: int, shuffle: bool) -> InMemoryBatches:
        if split not in self.splits:
            self.setup("test" if split == "test" else "fit")
        images, labels = self.splits[split]
        trainer = self.trainer
        return InMemoryBatches(
            images,
            labels,
            batch_size,
            shuffle=shuffle,
            seed=self.seed,
            epoch_fn=(lambda: trainer.current_epoch) if trainer else (lambda: 0),
            progress_fn=(
                (lambda: trainer.fit_loop.epoch_loop.batch_progress.current.completed)
                if trainer
                else (lambda: 0)
            ),
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )

    def train_dataloader(self) -> InMemoryBatches:
        return self._batches("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> InMemoryBatches:
        return self._batches("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> InMemoryBatches:
        return self._batches("test", self.eval_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        images = images.float().div_(255.0)
        training = self.trainer is not None and self.trainer.training
        if self.binarize == "dynamic" and training:
            images = torch.bernoulli(images)
        if self.hflip and training:
            flip = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < 0.5
            images = torch.where(flip, images.flip(-1), images)
        return images, labels

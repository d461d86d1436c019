"""Find a dataset on disk (or download it) and load a split as one uint8 tensor.

Search order for each dataset: `<root>/<torchvision layout>`, then the configured system folders
(Debian's dataset-fashion-mnist package puts Fashion-MNIST in /usr/share/datasets/fashion-mnist),
then torchvision's download. torchvision's own dataset classes do the reading, so files in the
genuine layout work unchanged; genlab adds the size checks and the error messages. A folder of
the user's own images (`data=image_folder`) is read by genlab.data.folder instead.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import torch

from genlab import GenlabError
from genlab.data.folder import folder_identity, load_image_folder
from genlab.data.formats import (
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
    check_idx_file,
    read_cifar_batch,
)

_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TV_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _missing_message(name: str, root: Path, where: str, tried_download: bool, why: str) -> str:
    hint = (
        " (`apt-get install dataset-fashion-mnist` provides it on Debian/Ubuntu)"
        if name == "fashion_mnist"
        else "; or train on Fashion-MNIST, which Debian packages: `apt-get install "
        "dataset-fashion-mnist` and `data=fashion_mnist`"
    )
    download = (
        f" Download failed: {why}." if tried_download else " Download is off (data.download)."
    )
    return (
        f"Dataset '{name}' not found: put the original files in {where}{hint}.{download} "
        f"(data root: {root}; set it with paths.data_dir=... or GENLAB_DATA_DIR)"
    )


def _stage_idx_from(folder: Path, raw: Path) -> bool:
    """Copy IDX files (gzipped or not) from `folder` into torchvision's raw folder."""
    names = [n for pair in _IDX_FILES.values() for n in pair]
    sources = {}
    for n in names:
        plain, packed = folder / n, folder / f"{n}.gz"
        if plain.is_file():
            sources[n] = plain
        elif packed.is_file():
            sources[n] = packed
        else:
            return False
    raw.mkdir(parents=True, exist_ok=True)
    for n, src in sources.items():
        tmp = raw / f".{n}.partial"
        with (
            gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb") as fin,
            open(tmp, "wb") as fout,
        ):
            shutil.copyfileobj(fin, fout)
        tmp.replace(raw / n)  # atomic: a killed copy never leaves a half file under the real name
    return True


def _load_mnist_family(name, root, train, system_dirs, download, **_options):
    import torchvision

    cls = getattr(torchvision.datasets, _TV_CLASS[name])
    raw = root / _TV_CLASS[name] / "raw"
    have = lambda: all((raw / n).is_file() for pair in _IDX_FILES.values() for n in pair)
    if not have():
        for folder in system_dirs:
            if _stage_idx_from(Path(folder), raw):
                break
    why = ""
    if not have() and download:
        try:
            cls(str(root), train=train, download=True)
        except Exception as err:  # no network, proxy, mirror down: all mean "not available"
            why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not have():
        raise GenlabError(_missing_message(name, root, str(raw), download, why))
    images_file, labels_file = (raw / n for n in _IDX_FILES[train])
    n_images = check_idx_file(images_file)[0]
    n_labels = check_idx_file(labels_file)[0]
    if n_images != n_labels:
        raise GenlabError(
            f"{images_file} holds {n_images} images but {labels_file} holds {n_labels} labels: "
            "one of them is from another download. Fetch both again."
        )
    ds = cls(str(root), train=train, download=False)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def _load_cifar10(name, root, train, system_dirs, download, **_options):
    import torchvision

    folder = root / "cifar-10-batches-py"
    have = lambda: all((folder / f).is_file() for f in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES)
    if not have():
        for extra in system_dirs:
            extra = Path(extra)
            if (extra / "cifar-10-batches-py").is_dir():
                shutil.copytree(extra / "cifar-10-batches-py", folder, dirs_exist_ok=True)
            elif (extra / "cifar-10-python.tar.gz").is_file():
                torchvision.datasets.utils.extract_archive(
                    str(extra / "cifar-10-python.tar.gz"), str(root)
                )
            if have():
                break
    why = ""
    if not have() and download:
        try:
            torchvision.datasets.CIFAR10(str(root), train=train, download=True)
        except Exception as err:
            why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not have():
        raise GenlabError(_missing_message("cifar10", root, str(folder), download, why))
    # genlab's own reader, not torchvision's plain pickle.load: nothing in the files can run.
    parts = [
        read_cifar_batch(folder / f) for f in (CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES)
    ]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).contiguous()
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise GenlabError(
            f"CIFAR-10 batches in {folder} hold labels outside 0..9: fetch them again."
        )
    return images, labels


def load_split(
    name: str, root: str | Path, *, train: bool, system_dirs=(), download: bool = True, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images uint8 [N, C, H, W], labels int64 [N]) for a split of a known dataset.
    `options`: the data config's other keys (split_seed, val_fraction, and the keys of a
    dataset's own, e.g. image_folder's path and image_size); each loader takes what it reads."""
    root = Path(root).expanduser()
    if name not in LOADERS:
        raise GenlabError(f"Unknown dataset '{name}': data= accepts {', '.join(LOADERS)}.")
    return LOADERS[name](name, root, train, list(system_dirs), download, **options)


def identity(name: str, root: str | Path, **options) -> dict:
    """{"id": the name caches of this data go by (domain classifier, FID statistics), "classes":
    class names or None}: the dataset's name, or for an image folder one unique to its files."""
    if name == "image_folder":
        return folder_identity(root=root, **options)
    return {"id": name, "classes": None}


# Dataset name (conf/data/<name>.yaml's `name`) -> its loader(name, root, train, system_dirs,
# download, **options): the one list of datasets genlab can read.
LOADERS = {
    "mnist": _load_mnist_family,
    "fashion_mnist": _load_mnist_family,
    "cifar10": _load_cifar10,
    "image_folder": load_image_folder,
}
# Datasets whose loader returns the train rows already in the seeded split order (validation
# first), so ImageDataModule slices instead of indexing: the image folder's memory-mapped rows
# then stay on disk instead of being copied into RAM.
IN_SPLIT_ORDER = {"image_folder"}

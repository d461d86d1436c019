"""Find a dataset on disk (or download it) and load a split as one uint8 tensor.

Search order for each dataset: `<root>/<torchvision layout>`, then the configured system folders
(Debian's dataset-fashion-mnist package puts Fashion-MNIST in /usr/share/datasets/fashion-mnist),
then torchvision's download. torchvision's own dataset classes do the reading, so files in the
genuine layout work unchanged; genlab adds the size checks and the error messages. A folder of
the user's own images (`data=image_folder`) is read by genlab.data.folder instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genlab import GenlabError
from genlab.data.folder import cache_dir, folder_identity, load_image_folder, user_cache_dir
from genlab.data.formats import (
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
    read_cifar_batch,
    read_idx,
)

_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TV_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _missing_message(name: str, root: Path, where: str, looked, tried_download: bool, why: str):
    hint = (
        " (`apt-get install dataset-fashion-mnist` provides it on Debian/Ubuntu)"
        if name == "fashion_mnist"
        else "; or train on Fashion-MNIST, which Debian packages: `apt-get install "
        "dataset-fashion-mnist` and `data=fashion_mnist`"
    )
    if tried_download:
        download = f" The download failed: {why or 'no reason given (no network here?)'}."
    else:
        download = " Download is off (data.download=false)."
    return (
        f"Dataset '{name}' not found on disk: looked in {', '.join(map(str, looked))}. To get it, "
        f"put the original files in {where}{hint}.{download} (data root: {root}; set it with "
        "paths.data_dir=... or GENLAB_DATA_DIR)"
    )


def _download_reason(err: Exception) -> str:
    """torchvision's download error in one line: it names each mirror, then the reason."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines)[:400] or type(err).__name__


def _cached(relative: str | Path) -> list[Path]:
    """A dataset's folder in the user's cache, where a read-only data root's download went."""
    folder = user_cache_dir() / relative
    return [folder] if folder.is_dir() else []


def _idx_folder(folder: Path, train: bool) -> tuple[Path, Path] | None:
    """The split's images and labels IDX files in `folder` (plain or gzipped), if both are."""
    found = []
    for n in _IDX_FILES[train]:
        plain, packed = folder / n, folder / f"{n}.gz"
        path = plain if plain.is_file() else packed if packed.is_file() else None
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _load_mnist_family(name, root, train, system_dirs, download, **_options):
    """Read the IDX files where they are (the data root's torchvision layout, a system folder
    such as Debian's, gzipped or not): nothing is copied, so a read-only folder works."""
    raw = root / _TV_CLASS[name] / "raw"
    looked = [raw, *map(Path, system_dirs), *_cached(Path(_TV_CLASS[name]) / "raw")]
    files = next((f for f in map(lambda d: _idx_folder(d, train), looked) if f), None)
    why = ""
    if files is None and download:
        import torchvision

        home = cache_dir(root)  # the data root, or a writable place when it is read-only
        try:
            getattr(torchvision.datasets, _TV_CLASS[name])(str(home), train=train, download=True)
        except Exception as err:  # no network, proxy, mirror down: all mean "not available"
            why = _download_reason(err)
        files = _idx_folder(home / _TV_CLASS[name] / "raw", train)
    if files is None:
        raise GenlabError(_missing_message(name, root, str(raw), looked, download, why))
    images_file, labels_file = files
    images, labels = read_idx(images_file), read_idx(labels_file)
    if len(images) != len(labels) or images.ndim != 3 or labels.ndim != 1:
        raise GenlabError(
            f"{images_file} holds images of shape {images.shape} and {labels_file} labels of "
            f"shape {labels.shape}: not one split of {name} (one is from another download, or "
            "of another dataset). Fetch both again."
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _load_cifar10(name, root, train, system_dirs, download, **_options):
    """The batches where they are (the data root, a system folder); an archive or a download
    is unpacked into the data root, or the user's cache when the data root is read-only."""
    import torchvision

    batches = "cifar-10-batches-py"
    have = lambda f: all((f / x).is_file() for x in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES)
    looked = [root / batches, *(Path(e) / batches for e in system_dirs), *_cached(batches)]
    folder = next((f for f in looked if have(f)), None)
    archives = [Path(e) / "cifar-10-python.tar.gz" for e in system_dirs]
    archive = next((a for a in archives if a.is_file()), None)
    if folder is None and archive is not None:
        home = cache_dir(root)
        torchvision.datasets.utils.extract_archive(str(archive), str(home))
        folder = home / batches if have(home / batches) else None
    why = ""
    if folder is None and download:
        home = cache_dir(root)
        try:
            torchvision.datasets.CIFAR10(str(home), train=train, download=True)
        except Exception as err:
            why = _download_reason(err)
        folder = home / batches if have(home / batches) else None
    if folder is None:
        where = str(root / batches)
        raise GenlabError(_missing_message("cifar10", root, where, looked, download, why))
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

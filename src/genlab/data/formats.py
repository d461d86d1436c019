"""On-disk formats of the datasets: IDX (the MNIST family) and CIFAR-10's pickled batches.

Readers check sizes and headers so a truncated or corrupted download fails with a message that
names the file, instead of a reshape error deep inside torchvision. Writers exist so tests (and
users with their own data) can produce files in the genuine formats.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from genlab import GenlabError

# IDX type codes (LeCun's format description): code -> numpy dtype (big-endian on disk).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open(path: Path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def read_idx_header(path: str | os.PathLike) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, shape, header_bytes) of an IDX file, checking magic and size."""
    path = Path(path)
    with _open(path) as f:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
            raise GenlabError(
                f"{path} is not an IDX file (bad magic number {head.hex() or 'empty'}). "
                "It is corrupted or of another format: delete it and fetch it again."
            )
        ndim = head[3]
        dims = f.read(4 * ndim)
        if len(dims) < 4 * ndim:
            raise GenlabError(
                f"{path} is truncated (header cut short): delete it and fetch it again."
            )
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    return _IDX_DTYPES[head[2]], shape, 4 + 4 * ndim


def check_idx_file(path: str | os.PathLike) -> tuple[int, ...]:
    """Check that an uncompressed IDX file holds exactly the bytes its header announces."""
    dtype, shape, header = read_idx_header(path)
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        raise GenlabError(
            f"{path} has {actual} bytes but its header announces {expected} (shape {shape}): "
            "the file is truncated or corrupted. Delete it and fetch it again."
        )
    return shape


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or .gz) into a numpy array."""
    dtype, shape, header = read_idx_header(path)
    with _open(Path(path)) as f:
        raw = f.read()
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != header + count * dtype.itemsize:
        raise GenlabError(
            f"{path} holds {len(raw) - header} data bytes but its header announces "
            f"{count * dtype.itemsize} (shape {shape}): truncated or corrupted; fetch it again."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as IDX; gzip-compressed when the name ends in .gz."""
    array = np.asarray(array)
    code = next((c for c, d in _IDX_DTYPES.items() if d == array.dtype.newbyteorder(">")), None)
    if code is None and array.dtype == np.uint8:
        code = 0x08
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST_FILES = ["test_batch"]


# What a CIFAR-10 batch pickle may name: numpy's array reconstruction and dtypes, and the
# str -> bytes codec that protocol-2 pickles use for byte strings. Anything else (a function, a
# class of another module) is refused before it is looked up, so no code runs from the file.
_CIFAR_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a function or class outside _CIFAR_ALLOWED."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_ALLOWED:
            return super().find_class(module, name)
        raise _RefusedGlobal(f"it names {module}.{name}, which a data file never needs")


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) of one `cifar-10-batches-py` file, read
    so that only arrays, lists, dicts, strings and numbers can come out of the pickle."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            record = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as err:
        raise GenlabError(
            f"Refused to read {path}: {err}. It is not a genuine CIFAR-10 batch (those hold only "
            "arrays and lists); delete the folder and fetch CIFAR-10 again."
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
    ) as err:
        raise GenlabError(
            f"Could not read CIFAR-10 batch {path} ({type(err).__name__}: {err}): the file is "
            "truncated or corrupted. Delete the folder and fetch it again."
        ) from None
    if isinstance(record, dict):
        record = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in record.items()}
    data = record.get("data") if isinstance(record, dict) else None
    labels = record.get("labels") if isinstance(record, dict) else None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
        or not isinstance(labels, list | np.ndarray)
        or len(labels) != len(data)
    ):
        raise GenlabError(
            f"CIFAR-10 batch {path} does not hold a uint8 'data' array of N x 3072 with N "
            "'labels': it is truncated or corrupted. Delete the folder and fetch it again."
        )
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def write_cifar10(folder: str | os.PathLike, train: tuple, test: tuple) -> Path:
    """Write (images NxHxWx3 uint8, labels) pairs as a `cifar-10-batches-py` folder."""
    folder = Path(folder) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name, images, labels):
        images = np.asarray(images, dtype=np.uint8)
        # The genuine files are Python 2 pickles whose keys load as str under latin1.
        record = {
            "batch_label": name,
            "labels": [int(v) for v in labels],
            "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
            "filenames": [f"{name}_{i}.png" for i in range(len(images))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(record, f, protocol=2)  # as the genuine (Python 2) files

    images, labels = train
    chunks = np.array_split(np.arange(len(images)), len(CIFAR10_TRAIN_FILES))
    for name, idx in zip(CIFAR10_TRAIN_FILES, chunks, strict=True):
        dump(name, images[idx], np.asarray(labels)[idx])
    dump("test_batch", *test)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 10000}, f)
    return folder

"""On-disk formats and dataset discovery: genuine layouts load through torchvision, bad files
and missing data fail with messages that name the file or folder and the fix."""

import gzip
import pickle

import numpy as np
import pytest
import torch
from fixtures import N_TEST, N_TRAIN, class_images, write_mnist_family

from genlab import GenlabError
from genlab.data.formats import check_idx_file, read_idx, write_cifar10, write_idx
from genlab.data.sources import load_split


def test_idx_round_trip_plain_and_gzip(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    for name in ("a-idx3-ubyte", "b-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(read_idx(tmp_path / name), array)
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])  # magic: uint8, 3 dims
    assert int.from_bytes(raw[4:8], "big") == 5
    assert gzip.decompress((tmp_path / "b-idx3-ubyte.gz").read_bytes()) == raw


def test_truncated_idx_is_named(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((10, 28, 28), dtype=np.uint8))
    assert check_idx_file(path) == (10, 28, 28)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(GenlabError, match="train-images-idx3-ubyte.*truncated"):
        check_idx_file(path)
    path.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 50)
    with pytest.raises(GenlabError, match="not an IDX file"):
        check_idx_file(path)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_family_loads_through_torchvision(data_root, name):
    images, labels = load_split(name, data_root, train=True, download=False)
    expected, expected_labels = class_images(N_TRAIN, (28, 28, 1), 0)
    assert images.dtype == torch.uint8 and images.shape == (N_TRAIN, 1, 28, 28)
    np.testing.assert_array_equal(images.numpy(), expected.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    test_images, _ = load_split(name, data_root, train=False, download=False)
    assert test_images.shape == (N_TEST, 1, 28, 28)


def test_truncated_dataset_file_fails_before_torchvision(tmp_path):
    write_mnist_family(tmp_path / "MNIST" / "raw")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(GenlabError, match="train-images-idx3-ubyte.*fetch it again"):
        load_split("mnist", tmp_path, train=True, download=False)


def test_fashion_mnist_found_in_system_dir(tmp_path):
    """Debian's dataset-fashion-mnist ships gzipped IDX files; they are read where they are,
    nothing is copied into the data root."""
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    write_mnist_family(system, gz=True)
    root = tmp_path / "data"
    images, labels = load_split(
        "fashion_mnist", root, train=False, system_dirs=[system], download=False
    )
    assert not root.exists()
    expected, expected_labels = class_images(N_TEST, (28, 28, 1), 1)
    np.testing.assert_array_equal(images[:, 0].numpy(), expected[..., 0])
    np.testing.assert_array_equal(labels.numpy(), expected_labels)


def test_cifar10_batches_load(tmp_path):
    train = class_images(50, (32, 32, 3), 5)
    test = class_images(20, (32, 32, 3), 6)
    write_cifar10(tmp_path, train, test)
    images, labels = load_split("cifar10", tmp_path, train=True, download=False)
    assert images.shape == (50, 3, 32, 32) and images.dtype == torch.uint8
    # Batches are concatenated in file order; write_cifar10 splits them in order too.
    np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), train[0])
    np.testing.assert_array_equal(labels.numpy(), train[1])
    images, labels = load_split("cifar10", tmp_path, train=False, download=False)
    np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), test[0])


def test_corrupted_cifar_batch_is_reported(tmp_path):
    write_cifar10(tmp_path, class_images(50, (32, 32, 3), 5), class_images(20, (32, 32, 3), 6))
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(GenlabError, match="truncated or corrupted"):
        load_split("cifar10", tmp_path, train=True, download=False)
    record = {"data": np.zeros((4, 100), dtype=np.uint8), "labels": [0, 1, 2, 3]}
    path.write_bytes(pickle.dumps(record))
    with pytest.raises(GenlabError):
        load_split("cifar10", tmp_path, train=True, download=False)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_dataset_names_folder_and_alternative(tmp_path, name):
    with pytest.raises(GenlabError) as err:
        load_split(name, tmp_path, train=True, download=False)
    message = str(err.value)
    folder = "MNIST/raw" if name == "mnist" else "cifar-10-batches-py"
    assert str(tmp_path) in message and folder in message
    assert "data=fashion_mnist" in message and "paths.data_dir" in message


def test_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz: Name or service not known"
        )

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(GenlabError) as err:
        load_split("fashion_mnist", tmp_path, train=True, download=True)
    assert "download failed" in str(err.value) and "Name or service not known" in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)


class _RunsCode:
    """Unpickling this calls exec(): what a crafted CIFAR-10 batch could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_cifar_batch_that_would_run_code_is_refused_by_name(tmp_path):
    write_cifar10(tmp_path, class_images(50, (32, 32, 3), 5), class_images(20, (32, 32, 3), 6))
    marker = tmp_path / "code-ran"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    record = {"data": np.zeros((10, 3072), dtype=np.uint8), "labels": _RunsCode(marker)}
    path.write_bytes(pickle.dumps(record, protocol=2))
    with pytest.raises(
        GenlabError, match=r"Refused to read .*data_batch_2.*(__builtin__|builtins)\.exec"
    ):
        load_split("cifar10", tmp_path, train=True, download=False)
    assert not marker.exists()
    # The genuine layout (protocol-2 pickles of arrays, lists and strings) still loads.
    write_cifar10(tmp_path, class_images(50, (32, 32, 3), 5), class_images(20, (32, 32, 3), 6))
    images, labels = load_split("cifar10", tmp_path, train=True, download=False)
    assert images.shape == (50, 3, 32, 32) and labels.dtype == torch.long

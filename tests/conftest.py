"""Shared fixtures: small datasets written in the genuine on-disk formats, and configs composed
from the real conf/ through Hydra's compose API. Constants and data writers live in fixtures.py
(importable by name); this file holds only pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import N_TEST, N_TRAIN, class_images, compose_run, write_mnist_family

from genlab.data.formats import write_cifar10


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


@pytest.fixture
def compose(data_root, tmp_path):
    """compose(*overrides) -> the real composed config, writing into a fresh tmp run dir."""

    def _compose(*overrides: str, run_dir: Path | None = None):
        return compose_run(data_root, run_dir or tmp_path / "run", *overrides)

    return _compose


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    # Tests never talk to W&B servers and never pick up a developer's key.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)

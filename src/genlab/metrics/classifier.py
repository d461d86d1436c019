"""A small classifier per dataset whose penultimate features make a "domain FID" that needs no
download (the Inception weights behind standard FID cannot be fetched on offline machines).

    python -m genlab.metrics.classifier --data fashion_mnist      # train once, cached

The checkpoint lands in <data dir>/genlab_classifiers/<dataset>.pt with its test accuracy, which
is reported beside every domain FID so readers know how good the feature space is.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genlab import GenlabError, interrupt
from genlab.progress import report

# Version of the training recipe; a cached classifier of an older one is retrained.
RECIPE = 2  # 2: dropout before the head and a one-cycle learning rate


class DomainClassifier(nn.Module):
    """Two conv blocks and a 128-d penultimate layer, trained for the default 3 epochs (its
    accuracy is in docs/experiments.md)."""

    feature_dim = 128

    def __init__(self, image_shape, num_classes: int = 10):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), self.feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)  # active only while training; no parameters
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class FeatureView(nn.Module):
    """What torchmetrics calls on images: penultimate features (FID, KID) or logits (IS)."""

    def __init__(self, classifier: DomainClassifier, logits: bool = False):
        super().__init__()
        self.classifier, self.logits = classifier.eval(), logits
        self.num_features = classifier.head.out_features if logits else classifier.feature_dim

    def train(self, mode: bool = True):  # stays in eval mode whatever torchmetrics asks
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # FID, KID and IS are each handed the same batch tensor: compute its features once
        # (the last batch seen, shared by every view of this classifier), not three times.
        memo = getattr(self.classifier, "_last_features", None)
        if memo is not None and memo[0] is x:
            features = memo[1]
        else:
            features = self.classifier.features(x)
            self.classifier._last_features = (x, features)
        return self.classifier.head(features) if self.logits else features


def cache_path(data_dir, dataset: str) -> Path:
    from genlab.data.folder import cache_dir

    return cache_dir(data_dir) / "genlab_classifiers" / f"{dataset}.pt"  # read-only: elsewhere


def _current(path: Path) -> bool:
    """A cached classifier exists and was trained with today's recipe."""
    if not path.is_file():
        return False
    from genlab.checkpoints import load_checkpoint

    return load_checkpoint(path).get("recipe", 1) >= RECIPE


def ensure_classifier(data_dir, dataset: str, datamodule=None) -> Path:
    """The cached classifier for `dataset`, trained first if there is none (~1 min on 2 CPU
    cores for the MNIST family). Parallel jobs of a sweep wait on a lock for the first one to
    train it instead of training it each. `datamodule`: the data to train it on, where
    `dataset` is no name of conf/data/ (an image folder's id)."""
    import fcntl
    import logging
    import os
    import time

    from genlab.data.folder import open_plain

    path = cache_path(data_dir, dataset)
    if _current(path):
        return path
    log = logging.getLogger("genlab")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_plain(path.with_name(f".{path.name}.lock"))  # a planted link is not followed
    with os.fdopen(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if killed
        if _current(path):  # another job trained it while this one waited
            return path
        log.info(
            "test/fid_domain needs a %s classifier of recipe %d and there is none at %s yet: "
            "training it once (cached for every later run) ...",
            dataset,
            RECIPE,
            path,
        )
        start = time.monotonic()
        # Called from Lightning's test stage, which runs with gradients off.
        with torch.inference_mode(False), torch.enable_grad():
            _, accuracy = train_classifier(dataset, data_dir, out=path, datamodule=datamodule)
        log.info(
            "domain classifier ready: %.2f%% test accuracy, %.0f s",
            100 * accuracy,
            time.monotonic() - start,
        )
    return path


def load_classifier(path, dataset: str, image_shape) -> tuple[DomainClassifier, float]:
    """(classifier, its test accuracy); refuses one trained on other data."""
    from genlab.checkpoints import load_checkpoint

    state = load_checkpoint(path)
    if state.get("dataset") != dataset or list(state.get("image_shape", [])) != list(image_shape):
        raise GenlabError(
            f"{path} is a classifier for {state.get('dataset')} images of shape "
            f"{state.get('image_shape')}, not {dataset} {list(image_shape)}. Train the right one "
            f"with `python -m genlab.metrics.classifier --data {dataset}`."
        )
    model = DomainClassifier(state["image_shape"], state["num_classes"])
    model.load_state_dict(state["state_dict"])
    return model.eval(), float(state["test_accuracy"])


def train_classifier(
    dataset: str,
    data_dir,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    seed: int = 0,
    out: Path | None = None,
    datamodule=None,
) -> tuple[Path, float]:
    """Train on the train split, measure accuracy on the test split, save, return both."""
    from genlab.data import ImageDataModule

    torch.manual_seed(seed)
    if datamodule is None:
        datamodule = ImageDataModule.from_name(dataset, data_dir)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    # On the CPU, where the classifier trains (a run's own splits may be on its GPU).
    images, labels = (t.cpu() for t in datamodule.splits["train"])
    model = DomainClassifier(datamodule.image_shape, datamodule.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=max(1, epochs * steps_per_epoch)
    )
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        report("domain classifier", epoch, epochs, unit="epochs")
        for start in range(0, len(order), batch_size):
            interrupt.poll()
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(images[idx].float() / 255), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    report("domain classifier", epochs, epochs, unit="epochs")
    accuracy = evaluate_accuracy(model.eval(), *(t.cpu() for t in datamodule.splits["test"]))
    state = {
        "state_dict": model.state_dict(),
        "dataset": dataset,
        "num_classes": datamodule.num_classes,
        "image_shape": list(datamodule.image_shape),
        "test_accuracy": accuracy,
        "epochs": epochs,
        "recipe": RECIPE,
    }
    from genlab.checkpoints import save_atomic

    return save_atomic(state, out or cache_path(data_dir, dataset)), accuracy


@torch.no_grad()
def evaluate_accuracy(model, images, labels, batch_size: int = 1000) -> float:
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size].float() / 255)
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / max(1, len(images))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, choices=["mnist", "fashion_mnist", "cifar10"])
    parser.add_argument("--data-dir", default=None, help="default: $GENLAB_DATA_DIR or ./data")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    import os

    data_dir = args.data_dir or os.environ.get("GENLAB_DATA_DIR", "./data")
    try:
        path, accuracy = train_classifier(args.data, data_dir, epochs=args.epochs)
    except GenlabError as err:
        raise SystemExit(f"genlab: error: {err}") from None
    print(f"wrote {path} (test accuracy {accuracy:.4f}, {math.ceil(accuracy * 1e4) / 100:.2f}%)")


if __name__ == "__main__":
    main()

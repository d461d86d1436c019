"""The in-memory data pipeline: order, sharding, split and batch-wise augmentation."""

from types import SimpleNamespace

import pytest
import torch

from genlab import GenlabError
from genlab.data import ImageDataModule, InMemoryBatches


def _batches(n=103, batch_size=10, **kwargs):
    images = torch.arange(n).view(n, 1, 1, 1).to(torch.uint8 if n < 256 else torch.int64)
    return InMemoryBatches(images, torch.arange(n), batch_size, **kwargs)


def _seen(batches) -> list[int]:
    return [int(v) for _, labels in batches for v in labels]


def test_epoch_visits_every_image_once_in_seeded_order():
    epoch = {"e": 0}
    batches = _batches(shuffle=True, seed=3, epoch_fn=lambda: epoch["e"])
    first = _seen(batches)
    assert sorted(first) == list(range(103)) and len(batches) == 11
    assert _seen(batches) == first  # same (seed, epoch): same order
    epoch["e"] = 1
    assert _seen(batches) != first  # next epoch: new order
    assert _seen(_batches(shuffle=True, seed=4)) != first  # another seed: another order
    assert _seen(_batches(shuffle=False)) == list(range(103))


def test_ranks_get_disjoint_equal_shards():
    ranks = [_batches(shuffle=True, seed=0, rank=r, world_size=2) for r in range(2)]
    shards = [_seen(b) for b in ranks]
    assert len(shards[0]) == len(shards[1]) == 51  # equal, so DDP steps stay in lockstep
    assert not set(shards[0]) & set(shards[1])
    assert len(ranks[0]) == len(ranks[1]) == 6
    # Evaluation shards are unpadded: together they hold every image exactly once.
    evals = [_seen(_batches(shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert sorted(evals[0] + evals[1]) == list(range(103))


def _module(data_root, **kwargs):
    dm = ImageDataModule(
        "mnist", str(data_root), [1, 28, 28], 10, batch_size=32, download=False, **kwargs
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_split_is_deterministic_disjoint_and_independent_of_seed(data_root):
    a, b = _module(data_root, seed=0), _module(data_root, seed=1)
    assert len(a.splits["val"][0]) == 32 and len(a.splits["train"][0]) == 288  # 10% of 320
    torch.testing.assert_close(a.splits["val"][0], b.splits["val"][0])
    c = _module(data_root, split_seed=5)
    assert not torch.equal(a.splits["val"][0], c.splits["val"][0])
    # disjoint: the val images are not among the train images (all generated images differ)
    train = {bytes(x.numpy()) for x in a.splits["train"][0]}
    assert not any(bytes(x.numpy()) in train for x in a.splits["val"][0])


def test_batches_become_float_and_flip_only_while_training(data_root):
    dm = _module(data_root, hflip=True)
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8  # the loader hands out raw bytes; conversion is on device
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    out, _ = dm.on_after_batch_transfer((x, y), 0)
    ref = x.float() / 255
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    flipped = [not torch.equal(o, r) for o, r in zip(out, ref, strict=True)]
    assert all(
        torch.equal(o, r) or torch.equal(o, r.flip(-1)) for o, r in zip(out, ref, strict=True)
    )
    assert 0 < sum(flipped) < len(flipped)
    dm.trainer = SimpleNamespace(training=False)
    out, _ = dm.on_after_batch_transfer((x, y), 0)
    torch.testing.assert_close(out, ref)


def test_declared_shape_must_match_files(data_root):
    dm = ImageDataModule("mnist", str(data_root), [3, 28, 28], 10, download=False)
    with pytest.raises(GenlabError, match=r"image_shape is \[3, 28, 28\].*\[1, 28, 28\]"):
        dm.prepare_data()

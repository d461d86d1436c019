"""`data=image_folder` (issue 15, item 1): real PNG and JPEG folders written in tmp dirs, the
decoded pixels against the files, the cache (reused, invalidated, its fallback home), the
seeded splits as views of the memory map, tiny train runs of vae, ddpm and cvae with a sample.py
task on them, and one clear message (exit 2) for every kind of bad folder."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import FAST
from PIL import Image

from genlab.composition import compose
from genlab.data import ImageDataModule
from genlab.data import folder as folder_module
from genlab.data.folder import DECODE_COUNT, cached_folder
from genlab.image_files import list_folder, split_sizes

SIDE = 16


def _pictures(n: int, channels: int, seed: int, side: int = SIDE) -> list[np.ndarray]:
    """Images with a class-like structure (a bright square somewhere) plus noise, uint8 HWC."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(0, 80, (side, side, channels), dtype=np.uint8)
        r, c = rng.integers(0, side // 2, 2)
        x[r : r + side // 2, c : c + side // 2] += 150
        out.append(x if channels == 3 else x[..., 0])
    return out


def _write(folder: Path, pictures, suffix: str, start: int = 0) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, x in enumerate(pictures, start):
        path = folder / f"img{i:03d}{suffix}"
        Image.fromarray(x).save(path, **({"quality": 95} if suffix == ".jpg" else {}))
        written[path.name] = x
    return written


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Two class folders of colour PNGs (one nested a level deeper) and a JPEG."""
    root = tmp_path_factory.mktemp("labelled")
    _write(root / "cats", _pictures(10, 3, 0), ".png")
    _write(root / "dogs" / "big", _pictures(9, 3, 1), ".png")
    _write(root / "dogs", _pictures(1, 3, 2), ".jpg", start=100)
    (root / "notes.txt").write_text("not an image: left alone")
    return root


@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> Path:
    """An unlabelled folder of grey JPEGs."""
    root = tmp_path_factory.mktemp("grey")
    _write(root, _pictures(20, 1, 3), ".jpg")
    return root


def _cache(path, data_dir, **settings):
    settings = {"image_size": SIDE, "channels": 3, "resize": True, "split_seed": 0, **settings}
    return cached_folder(path, data_dir, **settings)


def _rows_by_file(path, cache, split_seed=0):
    """{relative path: decoded row} (rows are stored in the seeded split order)."""
    listing = list_folder(path)
    order = torch.randperm(len(listing.files), generator=torch.Generator().manual_seed(split_seed))
    return {listing.files[i][0]: cache["images"][row] for row, i in enumerate(order.tolist())}, {
        listing.files[i][0]: int(cache["labels"][row]) for row, i in enumerate(order.tolist())
    }


# -- decoding ---------------------------------------------------------------------------------
def test_decoded_pixels_are_the_files_pixels(labelled, grey, tmp_path):
    rows, labels = _rows_by_file(labelled, cache := _cache(labelled, tmp_path))
    assert cache["classes"] == ["cats", "dogs"] and len(rows) == 20
    for rel, row in rows.items():
        file = labelled / rel
        assert labels[rel] == (0 if rel.startswith("cats/") else 1)
        if file.suffix == ".png":  # lossless: exactly the array written
            expected = np.asarray(Image.open(file)).transpose(2, 0, 1)
            assert np.array_equal(row.numpy(), expected), rel
        else:  # JPEG: Pillow's decode of the file, close to what was written
            expected = np.asarray(Image.open(file).convert("RGB")).transpose(2, 0, 1)
            assert np.array_equal(row.numpy(), expected)
    written = _pictures(10, 3, 0)[3]
    assert np.array_equal(rows["cats/img003.png"].numpy(), written.transpose(2, 0, 1))
    # Grey JPEGs as 1 channel, and repeated to 3 channels; colour PNGs to luma.
    grey_rows, grey_labels = _rows_by_file(grey, _cache(grey, tmp_path, channels=1))
    first = np.asarray(Image.open(grey / "img000.jpg"))
    assert grey_rows["img000.jpg"].shape == (1, SIDE, SIDE) and set(grey_labels.values()) == {0}
    assert np.array_equal(grey_rows["img000.jpg"][0].numpy(), first)
    assert np.abs(first.astype(int) - _pictures(20, 1, 3)[0]).mean() < 6  # q=95 JPEG
    as_rgb, _ = _rows_by_file(grey, _cache(grey, tmp_path, channels=3))
    assert all(np.array_equal(c.numpy(), first) for c in as_rgb["img000.jpg"])
    luma, _ = _rows_by_file(labelled, _cache(labelled, tmp_path, channels=1))
    png = Image.open(labelled / "cats/img003.png").convert("L")
    assert np.array_equal(luma["cats/img003.png"][0].numpy(), np.asarray(png))


def test_resize_keeps_the_centred_square_of_mixed_sizes(tmp_path):
    wide = np.zeros((16, 48), np.uint8)
    wide[:, 16:32] = 255  # white only in the centred 16x16 square
    tall = np.zeros((40, 20), np.uint8)
    tall[10:30, :] = 255
    for name, x in (("wide.png", wide), ("tall.png", tall), ("small.png", np.full((4, 4), 255))):
        Image.fromarray(x.astype(np.uint8)).save(tmp_path / name)
    cache = _cache(tmp_path, tmp_path / "data", image_size=8, channels=1)
    assert cache["images"].shape == (3, 1, 8, 8)
    assert (cache["images"] == 255).all()  # every crop is white: the sides were cut off


# -- the cache --------------------------------------------------------------------------------
def test_cache_is_reused_then_redone_when_a_file_or_a_setting_changes(tmp_path):
    folder = tmp_path / "imgs"
    _write(folder, _pictures(8, 3, 5), ".png")
    before = DECODE_COUNT[0]
    first = _cache(folder, tmp_path / "data")
    assert DECODE_COUNT[0] - before == 8
    (entry,) = [p for p in (folder / ".genlab_cache").iterdir() if p.is_dir()]
    stamp = (entry / "images.npy").stat().st_mtime_ns
    # Read back without pickle: raw .npy arrays and a JSON key.
    assert np.load(entry / "images.npy", allow_pickle=False).shape == (8, 3, SIDE, SIDE)
    assert json.loads((entry / "key.json").read_text())["key"]["count"] == 8
    again = _cache(folder, tmp_path / "data")
    assert DECODE_COUNT[0] - before == 8 and (entry / "images.npy").stat().st_mtime_ns == stamp
    assert torch.equal(first["images"], again["images"]) and first["id"] == again["id"]
    # A file changes (new pixels, same name): decoded again, with the new pixels; the stale
    # entry of the old files is removed.
    Image.fromarray(np.full((SIDE, SIDE, 3), 7, np.uint8)).save(folder / "img002.png")
    changed = _cache(folder, tmp_path / "data")
    assert DECODE_COUNT[0] - before == 16 and changed["id"] != first["id"]
    rows, _ = _rows_by_file(folder, changed)
    assert (rows["img002.png"] == 7).all() and not entry.exists()
    # Another image_size: another entry beside it (both stay: same files).
    small = _cache(folder, tmp_path / "data", image_size=8)
    assert DECODE_COUNT[0] - before == 24 and small["images"].shape == (8, 3, 8, 8)
    assert len([p for p in (folder / ".genlab_cache").iterdir() if p.is_dir()]) == 2


def test_unwritable_folder_caches_under_the_data_dir(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "imgs"
    _write(folder, _pictures(8, 3, 6), ".png")
    real = folder_module._writable
    monkeypatch.setattr(folder_module, "_writable", lambda p: folder not in p.parents and real(p))
    with caplog.at_level(logging.WARNING, logger="genlab"):
        _cache(folder, tmp_path / "data")
    assert not (folder / ".genlab_cache").exists()
    assert list((tmp_path / "data" / "genlab_image_cache").glob("*/*/images.npy"))
    assert "cannot be written: caching its images in" in caplog.text


def test_splits_are_seeded_contiguous_views_of_the_memory_map(labelled, tmp_path):
    def module(**kwargs):
        dm = ImageDataModule(
            "image_folder", str(tmp_path), [3, SIDE, SIDE], 2, path=str(labelled),
            image_size=SIDE, **kwargs,
        )  # fmt: skip
        dm.setup("fit")
        dm.setup("test")
        return dm

    a, b = module(seed=0), module(seed=1)
    n_test, n_val, n_train = split_sizes(20, 0.1, 0.1)
    assert [len(a.splits[s][0]) for s in ("test", "val", "train")] == [n_test, n_val, n_train]
    for split in ("train", "val", "test"):  # the training seed leaves the split alone
        assert torch.equal(a.splits[split][0], b.splits[split][0])
    whole = {bytes(x.numpy()) for s in a.splits.values() for x in s[0]}
    assert len(whole) == 20  # disjoint: every image once
    # Views of the whole memory-mapped cache (a copy of a split would own a smaller storage).
    assert {s[0].untyped_storage().nbytes() for s in a.splits.values()} == {20 * 3 * SIDE**2}
    c = module(split_seed=3)
    assert not torch.equal(a.splits["test"][0], c.splits["test"][0])
    assert a.labelled and a.class_names == ["cats", "dogs"] and a.dataset_id != c.dataset_id


# -- training and sampling ----------------------------------------------------------------------
TINY_DDPM = [
    *("model=ddpm", "model.timesteps=50", "model.sample_steps=5", "model.unet.base_channels=8"),
    *("model.unet.channel_mults=[1,2]", "model.unet.num_res_blocks=1"),
]


def _train(folder, data_dir, run_dir, *overrides):
    from genlab.training import run

    cfg = compose(
        "train",
        [
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={run_dir}",
            *FAST,
            "data=image_folder",
            f"data.path={folder}",
            f"data.image_size={SIDE}",
            "data.batch_size=8",
            "eval.num_samples=16",
            "eval.kid_subset_size=8",
            "eval.iwae_k=2",
            *overrides,
        ],
    )
    return run(cfg)


def test_every_model_trains_and_samples_on_a_folder(labelled, grey, tmp_path, caplog):
    from genlab.sample import run as sample

    with caplog.at_level(logging.WARNING, logger="genlab"):
        vae = _train(grey, tmp_path, tmp_path / "vae", "model=vae", "data.channels=1")
    assert "test/elbo" in vae and "test/fid_domain" not in vae
    assert "test/fid_domain, test/kid_domain, test/is_domain skipped" in caplog.text
    assert (tmp_path / "vae" / "samples.png").is_file()
    ddpm = _train(labelled, tmp_path, tmp_path / "ddpm", *TINY_DDPM, "test=false")
    assert np.isfinite(ddpm["val/loss"])
    # Labelled: the domain classifier is trained on the folder's own classes.
    cvae = _train(labelled, tmp_path, tmp_path / "cvae", "model=cvae", "model.latent_dim=2")
    assert 0 <= cvae["test/domain_classifier_acc"] <= 1 and np.isfinite(cvae["test/fid_domain"])
    assert list((tmp_path / "genlab_classifiers").glob("image_folder-*.pt"))
    for run_dir, task, n in (("cvae", "classes", 2), ("cvae", "latent_scatter", None),
                             ("ddpm", "samples", 2)):  # fmt: skip
        options = {"run": str(tmp_path / run_dir), "task": task, "device": "cpu"}
        (png,) = sample({**options, "out_dir": str(tmp_path / "out"), **({"n": n} if n else {})})
        assert png.is_file() and Image.open(png).size[0] > SIDE


# -- bad input: one message each, exit 2 -------------------------------------------------------
def _bad_folders(root: Path) -> dict[str, Path]:
    made = {"empty": root / "empty", "one": root / "one", "file": root / "one" / "img000.png"}
    made["empty"].mkdir(parents=True)
    (made["empty"] / "readme.txt").write_text("no images here")
    _write(made["one"], _pictures(1, 3, 0), ".png")
    made["broken"] = root / "broken"
    _write(made["broken"], _pictures(8, 3, 0), ".png")
    (made["broken"] / "img003.png").write_bytes(b"\x89PNG not really")
    made["mixed"] = root / "mixed"
    _write(made["mixed"], _pictures(6, 3, 0), ".png")
    _write(made["mixed"], _pictures(3, 3, 1, side=20), ".png", start=10)
    made["loose"] = root / "loose"
    _write(made["loose"] / "a", _pictures(8, 3, 0), ".png")
    _write(made["loose"], _pictures(1, 3, 1), ".png", start=50)
    made["grey"] = root / "grey"
    _write(made["grey"], _pictures(8, 1, 0), ".png")
    return made


BAD = [  # (argv with {name} a folder of _bad_folders, what the message must say)
    ([], "needs data.path"),
    (["data.path={missing}"], "does not exist"),
    (["data.path={file}"], "is a file, not a folder"),
    (["data.path={empty}"], "holds no PNG or JPEG images (*.png"),
    (["data.path={one}"], "holds 1 image: too few"),
    (["data.path={broken}"], "img003.png cannot be read as an image"),
    (["data.path={mixed}", "data.resize=false"], "6 images of 16x16 (e.g. img000.png), 3 of 20x20"),
    (["data.path={mixed}", "data.resize=false", "data.image_size=8"], "set data.resize=true"),
    (["data.path={grey}", "data.resize=false", "data.image_size=8"], "set data.image_size=16"),
    (["data.path={loose}"], "holds both images (img050.png) and class folders (a/)"),
    (["data.path={grey}", "model=cvae"], "model=cvae needs class labels"),
    (["data.path={grey}", "data.channels=2"], "data.channels must be 1 (grey) or 3"),
    (["data.path={grey}", "data.image_size=2"], "data.image_size must be an integer >= 4"),
    (["data.path={grey}", "data.num_classes=3"], "drop the data.num_classes override"),
]


def test_bad_folders_exit_2_with_one_message(tmp_path, capsys):
    from genlab.cli import start
    from genlab.commands import _single_run_task

    def hydra_main():
        raise AssertionError("Hydra's main ran: a single run is genlab.cli.run_once's")

    folders = {k: str(v) for k, v in _bad_folders(tmp_path / "bad").items()}
    folders["missing"] = str(tmp_path / "nowhere")
    common = [f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]
    handlers = list(logging.getLogger().handlers)
    for argv, message in BAD:
        argv = ["data=image_folder", *FAST, *(a.format(**folders) for a in argv)]
        with pytest.raises(SystemExit) as exited:  # what train.py runs
            start(hydra_main, _single_run_task, [*common, *argv], "train")
        printed = capsys.readouterr().err
        assert exited.value.code == 2, (argv, printed)
        assert message in printed and printed.count("genlab: error:") == 1, (argv, printed)
        assert "data." in printed and "Traceback" not in printed, printed
        assert not os.path.exists(tmp_path / "run"), argv  # a refused run leaves no run dir
        # The process's logging as it was (no handler left on the removed run dir's train.log).
        assert logging.getLogger().handlers == handlers, argv

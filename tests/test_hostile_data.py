"""Issue 24, image folders: a folder (and the `.genlab_cache/` shipped inside it) is data. Each
test plants what an attacker would ship and checks that the victim outside is unchanged and the
refusal names the planted path (GenlabError; exit 2 through train.py), or that a damaged cache
is rebuilt."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures import FAST, REPO
from PIL import Image

from genlab import GenlabError
from genlab.data.folder import DECODE_COUNT, cached_folder
from genlab.image_files import list_folder

SETTINGS = {"image_size": 8, "channels": 1, "resize": True, "split_seed": 0}
VICTIM_TEXT = "the user's private notes\n"


def _images(folder: Path, n: int = 8, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir(exist_ok=True)
    victim.write_text(VICTIM_TEXT)
    return victim


def _cache(folder: Path, data_dir: Path) -> dict:
    return cached_folder(folder, data_dir, **SETTINGS)


def _entry_name(folder: Path, data_dir: Path) -> str:
    """The cache entry's name, as an attacker computes it: build once, then ship without it."""
    name = _cache(folder, data_dir)["id"].removeprefix("image_folder-")
    shutil.rmtree(folder / ".genlab_cache")
    return name


def _entry(folder: Path) -> Path:
    (entry,) = [p for p in (folder / ".genlab_cache").iterdir() if not p.name.startswith(".")]
    return entry


def _train(tmp_path: Path, folder: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.update(GENLAB_OUTPUT_DIR=str(tmp_path / "outputs"))
    args = ["data=image_folder", f"data.path={folder}", "data.image_size=8", "data.channels=1"]
    args += [f"paths.data_dir={tmp_path / 'data'}", *FAST, "eval.sample_quality=false"]
    args += ["test=false", "model.mlp.hidden=[16]", "model.latent_dim=2"]
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _refused(proc, *named: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = proc.stderr[proc.stderr.index("genlab: error: ") :]
    for text in named:
        assert text in error, (text, error)


# -- the cache's lock and probe files ---------------------------------------------------------
def test_a_planted_lock_link_does_not_truncate_its_target_through_train_py(tmp_path):
    folder = _images(tmp_path / "shipped")
    victim = _victim(tmp_path)
    name = _entry_name(folder, tmp_path / "data")
    (folder / ".genlab_cache").mkdir()
    (folder / ".genlab_cache" / f".{name}.lock").symlink_to(victim)
    proc = _train(tmp_path, folder)
    _refused(proc, f".{name}.lock", "symlink")
    assert victim.read_text() == VICTIM_TEXT


def test_a_lock_that_is_a_fifo_or_a_folder_is_refused(tmp_path):
    folder = _images(tmp_path / "shipped")
    name = _entry_name(folder, tmp_path / "data")
    cache = folder / ".genlab_cache"
    cache.mkdir()
    os.mkfifo(cache / f".{name}.lock")  # opening it for writing would block forever
    with pytest.raises(GenlabError, match="not a plain file"):
        _cache(folder, tmp_path / "data")
    (cache / f".{name}.lock").unlink()
    (cache / f".{name}.lock").mkdir()
    with pytest.raises(GenlabError, match=f".{name}.lock"):
        _cache(folder, tmp_path / "data")


def test_a_planted_probe_link_does_not_truncate_its_target(tmp_path):
    folder = _images(tmp_path / "shipped")
    victim = _victim(tmp_path)
    (folder / ".genlab_cache").mkdir()
    probe = folder / ".genlab_cache" / f".probe-{os.getpid()}"
    probe.symlink_to(victim)
    with pytest.raises(GenlabError, match=f".probe-{os.getpid()}"):
        _cache(folder, tmp_path / "data")
    assert victim.read_text() == VICTIM_TEXT
    assert probe.is_symlink()  # the link itself is left for the user to look at


def test_the_domain_classifiers_lock_link_is_refused(tmp_path):
    from genlab.metrics.classifier import ensure_classifier

    victim = _victim(tmp_path)
    (tmp_path / "data" / "genlab_classifiers").mkdir(parents=True)
    (tmp_path / "data" / "genlab_classifiers" / ".mnist.pt.lock").symlink_to(victim)
    with pytest.raises(GenlabError, match=r"\.mnist\.pt\.lock"):
        ensure_classifier(tmp_path / "data", "mnist")
    assert victim.read_text() == VICTIM_TEXT


# -- links in the cache -----------------------------------------------------------------------
def test_a_cache_folder_that_is_a_link_out_is_refused(tmp_path):
    folder = _images(tmp_path / "shipped")
    elsewhere = tmp_path / "outside" / "dir"
    (elsewhere / "old").mkdir(parents=True)
    (elsewhere / "old" / "key.json").write_text('{"key": {"files_digest": "other"}}')
    (folder / ".genlab_cache").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(GenlabError, match=r"\.genlab_cache is a symlink"):
        _cache(folder, tmp_path / "data")
    assert sorted(p.name for p in elsewhere.rglob("*")) == ["key.json", "old"]


def test_a_cache_entry_that_is_a_link_out_is_refused(tmp_path):
    folder = _images(tmp_path / "shipped")
    name = _entry_name(folder, tmp_path / "data")
    elsewhere = tmp_path / "outside" / "entry"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keep.txt").write_text(VICTIM_TEXT)
    (folder / ".genlab_cache").mkdir()
    (folder / ".genlab_cache" / name).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(GenlabError, match=name):
        _cache(folder, tmp_path / "data")
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("file", ["images.npy", "labels.npy", "key.json"])
def test_a_cache_file_that_is_a_link_out_is_never_read(tmp_path, file):
    """A shipped, valid-looking entry whose file points at a file of the user's."""
    folder = _images(tmp_path / "shipped")
    _cache(folder, tmp_path / "data")
    entry = _entry(folder)
    private = tmp_path / "outside" / file
    private.parent.mkdir()
    shutil.move(entry / file, private)
    (entry / file).symlink_to(private)
    with pytest.raises(GenlabError, match=f"{file} is a symlink"):
        _cache(folder, tmp_path / "data")


def test_old_entries_are_removed_without_following_links(tmp_path):
    folder = _images(tmp_path / "shipped")
    _cache(folder, tmp_path / "data")
    cache = folder / ".genlab_cache"
    old = _entry(folder)
    # A stale entry links to the user's folder; another links to a stale-looking folder outside.
    keep = tmp_path / "outside" / "keep"
    keep.mkdir(parents=True)
    (keep / "key.json").write_text('{"key": {"files_digest": "an older state"}}')
    (keep / "precious.txt").write_text(VICTIM_TEXT)
    (old / "link").symlink_to(keep, target_is_directory=True)
    (cache / "linked-entry").symlink_to(keep, target_is_directory=True)
    _images(folder, n=1, start=50)  # new files: a new key, the old entry is stale
    _cache(folder, tmp_path / "data")
    assert not old.exists()  # removed, with the link inside it ...
    assert sorted(p.name for p in keep.iterdir()) == ["key.json", "precious.txt"]  # ... not this
    assert (keep / "precious.txt").read_text() == VICTIM_TEXT
    assert (cache / "linked-entry").is_symlink()


# -- key.json that is no genlab record: a stale entry, rebuilt --------------------------------
@pytest.mark.parametrize(
    "text", ["[1]", '"text"', "1", '{"key": 1}', '{"key": [1]}', "{not json", "\xff"]
)
def test_a_damaged_key_json_means_a_rebuild(tmp_path, text):
    folder = _images(tmp_path / "shipped")
    first = _cache(folder, tmp_path / "data")
    entry = _entry(folder)
    (entry / "key.json").write_text(text, encoding="latin-1")
    decoded = DECODE_COUNT[0]
    again = _cache(folder, tmp_path / "data")
    assert DECODE_COUNT[0] == decoded + 8  # decoded anew ...
    assert (again["images"] == first["images"]).all()
    assert '"files_digest"' in (entry / "key.json").read_text()  # ... and a real key.json


# -- images and class folders that are links ----------------------------------------------------
def test_an_image_linking_out_of_the_folder_is_refused_through_train_py(tmp_path):
    folder = _images(tmp_path / "shipped")
    private = _images(tmp_path / "home", n=1, start=90) / "90.png"
    (folder / "x.png").symlink_to(private)
    proc = _train(tmp_path, folder)
    _refused(proc, "x.png", str(private), "Copy the file into data.path")
    assert not (folder / ".genlab_cache").exists()  # nothing decoded


def test_a_class_folder_or_nested_link_out_is_refused(tmp_path):
    folder = tmp_path / "shipped"
    _images(folder / "a")
    _images(folder / "b", start=20)
    outside = _images(tmp_path / "home" / "photos", n=2, start=90)
    (folder / "c").symlink_to(outside, target_is_directory=True)
    with pytest.raises(GenlabError, match="Copy the folder into data.path"):
        list_folder(folder)
    (folder / "c").unlink()
    (folder / "a" / "deep").mkdir()
    (folder / "a" / "deep" / "p.png").symlink_to(outside / "90.png")
    with pytest.raises(GenlabError, match=r"deep/p\.png is a symlink"):
        list_folder(folder)


def test_links_that_stay_inside_the_folder_keep_working(tmp_path):
    folder = tmp_path / "shipped"
    _images(folder / "all" / "a")
    _images(folder / "all" / "b", start=20)
    (folder / "a").symlink_to("all/a", target_is_directory=True)
    (folder / "b").symlink_to(folder / "all" / "b", target_is_directory=True)
    (folder / "all" / "b" / "again.png").symlink_to("20.png")
    listing = list_folder(folder)
    assert listing.classes == ["a", "all", "b"]
    assert "b/again.png" in [rel for rel, _, _ in listing.files]
    cached = _cache(folder, tmp_path / "data")
    assert len(cached["images"]) == len(listing.files) == 8 + 17 + 9  # all/ is a class too

"""`data=image_folder`: the user's own PNG/JPEG images, decoded once into a memory-mapped cache.

Decoding (Pillow): EXIF orientation applied, converted to grey ("L", ITU-R 601 luma) or RGB
(alpha dropped), then with `resize` the largest centred square cut out and scaled to
image_size x image_size (bicubic); without it every image must be image_size x image_size.

The cache is one raw uint8 .npy [N, C, S, S] plus labels.npy and key.json, in
`<data.path>/.genlab_cache/<key digest>/` (or, where data.path cannot be written,
`<paths.data_dir>/genlab_image_cache/<folder digest>/<key digest>/`). The key is every file's
path, size and mtime plus the decoding settings and split_seed: any change gives a new key, so a
stale cache is never read. Rows are stored in split order (test first, then validation, then
train, a permutation seeded by split_seed), so each split is one contiguous slice of the memory
map and nothing is copied into RAM; batches read only their rows. The .npy files are written
through genlab.atomic and key.json last, so a killed decode leaves no entry that looks complete.
.npy holds no pickle (np.load with allow_pickle=False). The cache is data too (it may ship with a
folder): key.json is read as plain JSON (anything but genlab's object is a stale entry, rebuilt),
a symlink for `.genlab_cache`, an entry or its files is refused, locks and probes are opened
without following links, and old entries are removed without following any.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from genlab import GenlabError
from genlab.atomic import replace_atomically, write_text_atomic
from genlab.image_files import FolderListing, check_split, list_folder, split_sizes
from genlab.progress import report
from genlab.untrusted import read_json

log = logging.getLogger("genlab")
CACHE_VERSION = 1
DECODE_COUNT = [0]  # images decoded by this process (tests read it: a reused cache decodes none)


def decode(file: Path, image_size: int, channels: int, resize: bool) -> np.ndarray:
    """One image as uint8 [channels, image_size, image_size] (see the module docstring)."""
    from PIL import Image, ImageOps

    DECODE_COUNT[0] += 1
    with Image.open(file) as opened:
        if resize and opened.format == "JPEG":  # decode at a reduced scale (>= the target)
            opened.draft(opened.mode, (image_size, image_size))
        image = eight_bit(ImageOps.exif_transpose(opened)).convert("L" if channels == 1 else "RGB")
    w, h = image.size
    if resize:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
        if side != image_size:
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


# Pillow's modes of more than 8 bits per pixel: 16-bit grey PNGs open as I;16 (or I in older
# Pillows). Pillow's own convert() clips them to 255 instead of scaling.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def eight_bit(image):
    """`image` in a mode Pillow converts to L or RGB by itself: 16-bit grey scaled by 255/65535
    (rounded); a mode with no fixed range of values (F: floats; I beyond 16 bits) refused."""
    from PIL import Image

    if image.mode == "F":
        raise GenlabError(
            "its mode is F (32-bit floats), which has no fixed range of pixel values: save it "
            "as an 8- or 16-bit PNG or JPEG."
        )
    if image.mode not in WIDE_MODES:
        return image
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise GenlabError(
            f"its mode is {image.mode} with values {values.min()}..{values.max()}, outside the "
            "16-bit range 0..65535: save it as an 8- or 16-bit PNG."
        )
    return Image.fromarray(np.rint(values / 257.0).astype(np.uint8), "L")


def _check_sizes(listing: FolderListing, path, image_size: int) -> None:
    """With resize off, every image must already be image_size x image_size: one message
    naming the sizes found (read from the headers, nothing decoded)."""
    from PIL import Image

    sizes: dict[tuple[int, int], list[str]] = {}
    for rel, _, _ in listing.files:
        try:
            with Image.open(listing.root / rel) as image:
                sizes.setdefault(image.size, []).append(rel)
        except Exception as err:  # noqa: BLE001 - every reason a file is no image
            raise _unreadable(path, rel, err) from None
    if list(sizes) == [(image_size, image_size)]:
        return
    parts = [f"{len(f)} of {w}x{h} (e.g. {f[0]})" for (w, h), f in sorted(sizes.items())]
    found = ", ".join(parts).replace(" of ", " images of ", 1)
    (w, h), *more = sizes
    fix = (
        f"set data.image_size={w}, or data.resize=true to scale them"
        if not more and w == h
        else "set data.resize=true (each image's centred square is scaled to data.image_size)"
    )
    raise GenlabError(
        f"data.path={path} holds {found}, but data.resize=false needs every image to "
        f"be data.image_size={image_size} pixels square: {fix}."
    )


def _unreadable(path, rel: str, err: Exception) -> GenlabError:
    why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return GenlabError(
        f"data.path={path}: {rel} cannot be read as an image ({why}). Delete or replace it, or "
        "move it out of data.path."
    )


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def open_plain(path: Path) -> int:
    """A lock or probe file opened for writing (nothing is written) without following a
    symlink: a link planted in a shared folder would make the open create or truncate its
    target. A FIFO, a folder or any other non-file there is refused too (GenlabError)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise
        fd = None
    if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    if fd is not None:
        os.close(fd)
    raise GenlabError(
        f"{path} is a symlink or not a plain file: genlab creates it as an empty file and never "
        "follows a link there (it would write the file the link points to). Delete it and "
        "run again."
    )


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise GenlabError(
            f"{path} is a symlink (to {os.path.realpath(path)}): genlab makes no links in its "
            "image cache and follows none (it would read or write files outside the cache). "
            "Delete it; the cache is rebuilt."
        )


def _writable(folder: Path) -> bool:
    """Whether genlab can create files in `folder` (tried: permission bits say nothing to root
    nor about a read-only mount)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        os.close(open_plain(probe))
        probe.unlink()
        return True
    except OSError:
        return False


def user_cache_dir() -> Path:
    """genlab's folder in the user's cache ($XDG_CACHE_HOME/genlab, else ~/.cache/genlab)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "genlab"


_announced: set[Path] = set()


def cache_dir(data_dir) -> Path:
    """Where genlab writes what it derives from the data (downloads, decoded image folders, FID
    statistics, domain classifiers): paths.data_dir, or the user's cache when paths.data_dir
    cannot be written (a shared, read-only dataset folder), said once per process."""
    root = Path(data_dir).expanduser()
    if _writable(root):
        return root
    fallback = user_cache_dir()
    if not _writable(fallback):
        raise GenlabError(
            f"paths.data_dir={data_dir} cannot be written, nor can {fallback}, where genlab "
            "would put its caches instead: point paths.data_dir or XDG_CACHE_HOME at a folder "
            "you can write."
        )
    if root not in _announced:
        _announced.add(root)
        log.warning("paths.data_dir=%s cannot be written: genlab's caches go to %s", root, fallback)
    return fallback


def cache_homes(folder: Path, data_dir) -> list[Path]:
    """Where a folder's cache may live: beside the images, else under paths.data_dir, else in
    the user's cache (both folders read-only: a shared dataset)."""
    name = _digest(str(folder.resolve()))
    return [
        folder / ".genlab_cache",
        Path(data_dir).expanduser() / "genlab_image_cache" / name,
        user_cache_dir() / "genlab_image_cache" / name,
    ]


def _read_key(entry: Path) -> dict | None:
    """key.json's record {"key": {...}, "shape": [...]}; None for anything else (missing,
    unreadable, another shape of JSON: a stale entry)."""
    try:
        record = read_json(entry / "key.json")
    except GenlabError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("key"), dict)
    return record if ok else None


def _valid(entry: Path, key: dict) -> bool:
    for path in (entry, entry / "key.json", entry / "images.npy", entry / "labels.npy"):
        _refuse_link(path)
    record = _read_key(entry)
    return record is not None and record["key"] == key


def _write_entry(entry: Path, key: dict, rows, labels: np.ndarray, decode_row) -> None:
    """images.npy (filled row by row through a memory map, never whole in RAM), labels.npy,
    then key.json: the entry counts only once key.json exists."""
    shape = (len(rows), key["channels"], key["image_size"], key["image_size"])

    def write_images(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        report("image folder: decoding", 0, len(rows), unit="images")
        workers = min(8, os.cpu_count() or 1)  # Pillow decodes without the GIL
        with ThreadPoolExecutor(workers) as pool:
            for i, pixels in enumerate(pool.map(decode_row, rows)):
                out[i] = pixels
                if (i + 1) % 256 == 0 or i + 1 == len(rows):
                    report("image folder: decoding", i + 1, len(rows), unit="images")
        out.flush()
        del out

    def write_labels(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, labels, allow_pickle=False)

    replace_atomically(entry / "images.npy", write_images)
    replace_atomically(entry / "labels.npy", write_labels)
    write_text_atomic(entry / "key.json", json.dumps({"key": key, "shape": list(shape)}))


def _drop_stale(home: Path, keep: Path, files_digest: str) -> None:
    """Remove the entries of an older state of the folder (other files); entries of the same
    files with other settings stay (a sweep over image_size uses them all)."""
    with os.scandir(home) as found:
        folders = [Path(e.path) for e in found if e.is_dir(follow_symlinks=False)]  # no links
    for other in folders:
        record = _read_key(other)  # none yet: an entry being written by another process
        if other == keep or record is None or "files_digest" not in record["key"]:
            continue
        if record["key"]["files_digest"] != files_digest:
            shutil.rmtree(other, ignore_errors=True)  # removes links inside, follows none
            (home / f".{other.name}.lock").unlink(missing_ok=True)


def cached_folder(path, data_dir, *, image_size, channels, resize, split_seed) -> dict:
    """The cache entry of a folder for these settings, decoding the images first if there is
    none: {"images": memory-mapped uint8 tensor in split order, "labels", "classes", "id"}."""
    import fcntl

    listing = list_folder(path)
    files_digest = _digest(listing.files)
    key = {
        "version": CACHE_VERSION,
        "files_digest": files_digest,
        "count": len(listing.files),
        "classes": listing.classes,
        "image_size": image_size,
        "channels": channels,
        "resize": resize,
        "split_seed": split_seed,
    }
    name = _digest(key)
    homes = cache_homes(listing.root, data_dir)
    for home in homes:
        _refuse_link(home)
    entry = next((h / name for h in homes if _valid(h / name, key)), None)
    if entry is None:
        home = next((h for h in homes if _writable(h)), None)
        if home is None:
            raise GenlabError(
                f"data.path={path}: no place to cache the decoded images: none of "
                f"{', '.join(map(str, homes))} can be written. Make one writable "
                "(paths.data_dir=..., or XDG_CACHE_HOME for the last)."
            )
        if home != homes[0]:
            log.warning("data.path=%s cannot be written: caching its images in %s", path, home)
        entry = home / name
        lock = open_plain(home / f".{name}.lock")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # parallel jobs: one decodes, the others wait
            if not _valid(entry, key):
                _build(entry, listing, key, path)
                _drop_stale(home, entry, files_digest)
        finally:
            os.close(lock)
    images = np.load(entry / "images.npy", mmap_mode="c", allow_pickle=False)  # copy-on-write:
    labels = np.load(entry / "labels.npy", allow_pickle=False)  # writable for torch, file intact
    return {
        "images": torch.from_numpy(images),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "classes": listing.classes,
        "id": f"image_folder-{name}",
    }


def _build(entry: Path, listing: FolderListing, key: dict, path) -> None:
    size, channels, resize = key["image_size"], key["channels"], key["resize"]
    if not resize:
        _check_sizes(listing, path, size)
    order = torch.randperm(
        len(listing.files), generator=torch.Generator().manual_seed(key["split_seed"])
    ).tolist()
    labels = np.asarray([listing.labels[i] for i in order], dtype=np.int64)
    log.info("image folder %s: decoding %d images once into %s", path, len(order), entry.parent)

    def decode_row(i: int) -> np.ndarray:
        rel = listing.files[i][0]
        try:
            return decode(listing.root / rel, size, channels, resize)
        except GenlabError as err:  # a mode genlab refuses
            raise GenlabError(f"data.path={path}: {rel} cannot be used: {err}") from None
        except Exception as err:  # noqa: BLE001 - every reason a file is no image
            raise _unreadable(path, rel, err) from None

    if entry.exists():  # a half-written entry of a killed decode
        shutil.rmtree(entry, ignore_errors=True)
    entry.mkdir(parents=True, exist_ok=True)
    try:
        _write_entry(entry, key, order, labels, decode_row)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(entry)
        raise


def load_image_folder(
    name,
    root,
    train: bool,
    system_dirs,
    download,
    *,
    path=None,
    image_size: int = 32,
    channels: int = 3,
    resize: bool = True,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    **_unused,
) -> tuple[torch.Tensor, torch.Tensor]:
    """genlab.data.sources' loader of `data=image_folder`: the test rows, or the train rows
    (validation first: ImageDataModule takes its first val_fraction as the validation split)."""
    cache = cached_folder(
        path, root, image_size=image_size, channels=channels, resize=resize, split_seed=split_seed
    )
    images, labels = cache["images"], cache["labels"]
    check_split(path, len(images), test_fraction, val_fraction)
    n_test = split_sizes(len(images), test_fraction, val_fraction)[0]
    return (images[n_test:], labels[n_test:]) if train else (images[:n_test], labels[:n_test])


def folder_identity(
    path, root, *, image_size=32, channels=3, resize=True, split_seed=0, **_unused
) -> dict:
    """{"id": the folder's dataset name for caches (domain classifier, FID statistics), unique
    to its files and settings, "classes": its class names} (decodes if there is no cache)."""
    cache = cached_folder(
        path, root, image_size=image_size, channels=channels, resize=resize, split_seed=split_seed
    )
    return {"id": cache["id"], "classes": cache["classes"]}

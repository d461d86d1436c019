"""What a folder of the user's own images holds (`data=image_folder`), torch-free.

The rules, checked here once for the config check (genlab.run_rules.validate_run_config), the
`data.num_classes` resolver and the loader (genlab.data.folder):

- images are the files ending in .png, .jpg or .jpeg (any case); other files are left alone;
  names starting with "." are skipped (genlab's own `.genlab_cache/` lives among the images);
- a folder whose subfolders hold images is labelled: each top-level subfolder is a class
  (images at any depth below it), classes numbered in sorted name order; a folder with images
  and no such subfolder is unlabelled (every label 0, `data.num_classes` = 1);
- images beside class folders are refused (which class would they be?);
- an image or folder that is a symlink leading out of data.path is refused (files are data:
  docs/security.md); links that stay inside data.path are followed;
- the test split takes `data.test_fraction` of the images (at least one), the validation split
  `data.val_fraction` of the rest, and every split must keep at least one image.

Every problem is a GenlabError naming data.path and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab import GenlabError
from genlab.spec_rules import check_value, config_value
from genlab.specs import is_int, is_number

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NAME = "image_folder"  # conf/data/image_folder.yaml's data.name


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


@dataclass(frozen=True)
class FolderListing:
    root: Path
    files: list[tuple[str, int, int]]  # (path below root, bytes, mtime in ns), sorted by path
    classes: list[str]  # class folder names, sorted; [] for an unlabelled folder
    labels: list[int]  # class index per file (all 0 when unlabelled)

    @property
    def num_classes(self) -> int:
        return max(1, len(self.classes))


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        raise GenlabError(
            f"data.path: {folder} cannot be read ({err.strerror or err}). Make it readable, or "
            "point data.path at a folder you can read."
        ) from None


def _check_link(entry: os.DirEntry, root: Path) -> None:
    """Refuse an image or folder of data.path that is a symlink leading out of data.path."""
    if not entry.is_symlink():
        return
    base, target = Path(os.path.realpath(root)), Path(os.path.realpath(entry.path))
    if target != base and base not in target.parents:
        raise GenlabError(
            f"data.path={root}: {entry.path} is a symlink to {target}, outside data.path, and "
            "genlab reads nothing outside the folder it is given. Copy the "
            f"{'folder' if entry.is_dir() else 'file'} into data.path instead of linking it "
            "(links that stay inside data.path are fine)."
        )


def _images_below(
    folder: Path, stat: bool, root: Path, above: tuple = ()
) -> Iterator[tuple[str, int, int]]:
    """(path relative to `folder`, size, mtime_ns) of every image at any depth, sorted.
    `root`: data.path, which no followed link may leave. `above`: the (device, inode) of the
    folders above, so that a symlink loop is named."""
    here = _identity(folder)
    for entry in _entries(folder):
        if entry.is_dir():
            _check_link(entry, root)
            below = Path(entry.path)
            if _identity(below) in (*above, here):
                raise GenlabError(
                    f"data.path: {below} is a symlink loop (it leads back to "
                    f"{Path(os.path.realpath(below))}, a folder above it): remove the link."
                )
            for rel, size, mtime in _images_below(below, stat, root, (*above, here)):
                yield f"{entry.name}/{rel}", size, mtime
        elif is_image(entry.name) and entry.is_file():
            _check_link(entry, root)
            info = entry.stat() if stat else None
            yield entry.name, (info.st_size if info else 0), (info.st_mtime_ns if info else 0)


def _identity(folder: Path) -> tuple[int, int]:
    try:
        info = folder.stat()
    except OSError as err:
        raise GenlabError(
            f"data.path: {folder} cannot be read ({err.strerror or err}). Remove it or make it "
            "readable."
        ) from None
    return info.st_dev, info.st_ino


def _has_image(folder: Path, root: Path) -> bool:
    return next(_images_below(folder, False, root), None) is not None


def _checked_root(path: Any) -> Path:
    if path in (None, ""):
        raise GenlabError(
            "data=image_folder needs data.path, the folder of your PNG/JPEG images: "
            "`python train.py data=image_folder data.path=/path/to/images`."
        )
    root = Path(str(path)).expanduser()
    if not root.exists():
        raise GenlabError(
            f"data.path={path} does not exist. Give the folder that holds your PNG/JPEG images "
            "(data.path=/path/to/images)."
        )
    if not root.is_dir():
        raise GenlabError(
            f"data.path={path} is a file, not a folder: give the folder that holds the images "
            f"(data.path={root.parent})."
        )
    return root


def class_folders(path: Any) -> list[str]:
    """The class folder names of `path` (sorted), [] for an unlabelled folder; cheap: it stops
    at the first image of each subfolder."""
    root = _checked_root(path)
    found = []
    for entry in _entries(root):
        if entry.is_dir():
            _check_link(entry, root)
            if _has_image(Path(entry.path), root):
                found.append(entry.name)
    return found


def count_classes(path: Any) -> int:
    """`data.num_classes` of an image folder (the `genlab_image_classes` resolver): its class
    folders, 1 when unlabelled. Never raises: a bad data.path composes and is then named by
    `check_config`, which runs before anything reads the number."""
    try:
        return max(1, len(class_folders(path)))
    except GenlabError:
        return 1


def list_folder(path: Any, stat: bool = True) -> FolderListing:
    """Every image of the folder with its class, in the rules of this module's docstring."""
    root = _checked_root(path)
    classes = class_folders(root)
    loose = [e.name for e in _entries(root) if is_image(e.name) and e.is_file()]
    if classes and loose:
        raise GenlabError(
            f"data.path={path} holds both images ({', '.join(loose[:3])}"
            f"{', ...' if len(loose) > 3 else ''}) and class folders "
            f"({', '.join(c + '/' for c in classes[:5])}{', ...' if len(classes) > 5 else ''}): "
            "move the loose images into a class folder (or out of data.path), or move the "
            "images of the class folders up for unlabelled training."
        )
    files, labels = [], []
    for label, name in enumerate(classes):
        for rel, size, mtime in _images_below(root / name, stat, root):
            files.append((f"{name}/{rel}", size, mtime))
            labels.append(label)
    if not classes:
        files = list(_images_below(root, stat, root))
        labels = [0] * len(files)
    if not files:
        others = [e.name for e in _entries(root) if e.is_file()]
        held = f" (only {len(others)} other file(s), e.g. {others[0]})" if others else ""
        raise GenlabError(
            f"data.path={path} holds no PNG or JPEG images (*.png, *.jpg, *.jpeg, in it or in "
            f"one subfolder per class){held}. Put your images there, or point data.path at the "
            "folder that has them."
        )
    return FolderListing(root, files, classes, labels)


def split_sizes(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """(test, validation, train) image counts of a folder of n images. The validation count
    is ImageDataModule's (round(share of the rest)), so both compute the same split."""
    n_test = max(1, int(round(n * test_fraction)))
    n_val = int(round((n - n_test) * val_fraction))
    return n_test, n_val, n - n_test - n_val


def check_split(path: Any, n: int, test_fraction: float, val_fraction: float) -> None:
    n_test, n_val, n_train = split_sizes(n, test_fraction, val_fraction)
    if n_train >= 1 and (n_val >= 1 or val_fraction == 0):
        return
    least = next(
        m
        for m in range(2, 10**6)
        if (s := split_sizes(m, test_fraction, val_fraction))[2] >= 1
        and (s[1] >= 1 or val_fraction == 0)
    )
    raise GenlabError(
        f"data.path={path} holds {n} image{'s' if n != 1 else ''}: too few for a train, a "
        f"validation and a test split (data.test_fraction={test_fraction}, "
        f"data.val_fraction={val_fraction} need at least {least}). Add images to the folder."
    )


def _conditional(cfg) -> str | None:
    """The settings that make this config's model train on labels (its spec's `uses_labels`)."""
    from genlab.models.catalog import MODEL_SPECS

    name = config_value(cfg, "model.name", None)
    model = config_value(cfg, "model", None) or {}
    if name not in MODEL_SPECS or not MODEL_SPECS[name].uses_labels(model):
        return None
    return f"model={name}" + (" model.conditional=true" if "conditional" in model else "")


def check_config(cfg, starting: bool = True) -> None:
    """The data.* keys of `data=image_folder` (no-op for other data); `starting`: also the folder
    itself (for a finished run's config.yaml the loader checks it when it reads the images)."""
    if config_value(cfg, "data.name", None) != NAME:
        return
    check_value(cfg, "data.image_size", lambda v: is_int(v) and v >= 4, "an integer >= 4 (pixels)")
    check_value(cfg, "data.channels", lambda v: v in (1, 3) and is_int(v), "1 (grey) or 3 (RGB)")
    check_value(cfg, "data.resize", lambda v: isinstance(v, bool), "true or false")
    check_value(
        cfg, "data.test_fraction", lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)"
    )
    path, given = config_value(cfg, "data.path", None), config_value(cfg, "data.num_classes", None)
    if starting:
        listing = list_folder(path, stat=False)
        val = config_value(cfg, "data.val_fraction", 0.1)
        check_split(path, len(listing.files), cfg.data.test_fraction, val if is_number(val) else 0)
        if given != listing.num_classes:
            found = f"{len(listing.classes)} class folders ({', '.join(listing.classes[:5])})"
            raise GenlabError(
                f"data.num_classes={given}, but data.path={path} holds "
                f"{found if listing.classes else 'no class folders (unlabelled: 1 class)'}: "
                "drop the data.num_classes override, it is counted from the folder."
            )
    wants = _conditional(cfg)
    if wants and is_int(given) and given < 2:
        raise GenlabError(
            f"{wants} needs class labels, but data.path={path} has fewer than two class "
            f"folders (data.num_classes={given}). Put each class's images into its own "
            "subfolder of data.path, or train an unconditional model (model=vae, model=ddpm)."
        )

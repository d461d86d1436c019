"""What a command line asks of the machine, checked before anything is allocated or loaded.

- `physical_memory()` and `refuse_if_too_big()`: a size estimate against this machine's memory,
  so `model.latent_dim=10**9` or `sample.py n=10**12` fail with a message instead of an
  out-of-memory kill (or a swap storm) minutes later (a model's size: its spec's
  `parameters_lower_bound`)
- `checkpoint_problem(path)`: whether a file can be a torch checkpoint at all (torch's zip
  layout, or the legacy pickle), read from its first bytes, so a sweep precheck refuses a wrong
  `ckpt_path` before any job starts; what it holds is checked by genlab.checkpoints when loaded

Torch-free, like everything the CLI runs before Hydra hands over a config.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

from genlab import GenlabError

# Training holds each parameter 4 times (weights, gradients, Adam's two moments), 4 bytes each.
TRAIN_BYTES_PER_PARAMETER = 16


def physical_memory() -> int | None:
    """This machine's RAM in bytes, None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def refuse_if_too_big(needed: float, what: str, key: str, fix: str) -> None:
    """GenlabError naming `key` when `needed` bytes exceed this machine's memory."""
    memory = physical_memory()
    if memory is None or needed <= memory:
        return
    raise GenlabError(
        f"{key}: {what} needs at least {_gib(needed)} of memory, more than this machine has "
        f"({_gib(memory)}); nothing was allocated. {fix}"
    )


def checkpoint_problem(path: Path) -> str | None:
    """Why the file at `path` cannot be a torch checkpoint (None when it can): torch.save
    writes a zip holding `<name>/data.pkl`, or (before torch 1.6) a pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"it cannot be read ({err.strerror})"
    if not head:
        return "it is empty"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "it is a damaged zip file"
        if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "it is a zip file, but not one torch.save wrote (no data.pkl inside)"
        return None
    if head[:1] == b"\x80":  # a pickle's PROTO opcode: torch's legacy format
        return None
    return "its content is neither torch's zip format nor a pickle"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (checkpoints and exports are large):
    what an export records of its weights and a latent DDPM of its autoencoder's checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

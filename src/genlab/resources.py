"""What a command line asks of the machine, checked before anything is allocated or loaded.

- `physical_memory()` and `refuse_if_too_big()`: a size estimate against this machine's memory,
  so `model.latent_dim=10**9` or `sample.py n=10**12` fail with a message instead of an
  out-of-memory kill (or a swap storm) minutes later
- `model_parameters(model, image_shape)`: a lower bound on a model's parameter count from its
  config alone (the largest layers of genlab.nets), never above the real count, so a model that
  fits is never refused
- `checkpoint_problem(path)`: whether a file can be a torch checkpoint at all (torch's zip
  layout, or the legacy pickle), read from its first bytes, so a sweep precheck refuses a wrong
  `ckpt_path` before any job starts; what it holds is checked by genlab.checkpoints when loaded

Torch-free, like everything the CLI runs before Hydra hands over a config.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def _ints(v: Any) -> list[int]:
    try:
        return [int(i) for i in v]
    except (TypeError, ValueError):
        return []


def model_parameters(model: Mapping[str, Any], image_shape) -> tuple[int, str]:
    """(a lower bound on the parameter count, the key that makes most of it). Only the layers
    every variant has are counted (the input and latent layers, the U-Net's 3x3 convolutions)."""
    shape = _ints(image_shape)
    pixels = shape[0] * shape[1] * shape[2] if len(shape) == 3 else 0
    terms: list[tuple[int, str]] = []
    if model.get("name") == "latent_ddpm":
        # Its denoiser (an MLP or a U-Net) is sized by the autoencoder's latent, which is known
        # only once that run is loaded: no lower bound above 0 holds for every autoencoder.
        return 0, "model"
    if model.get("name") == "vqvae":
        channels = _ints(model.get("channels"))
        code_dim = int(model.get("code_dim") or 0)
        widest = max(channels, default=0)
        codebook_share = 2 if model.get("codebook_update", "ema") == "ema" else 1
        # The stride-2 3x3 convs of the encoder and their transposed mirror in the decoder, the
        # 3x3 conv from the code grid back to the last width, the residual blocks' 3x3 convs,
        # and the codebook: a parameter when it learns by gradient; with EMA updates two
        # buffers (codes and moving sums, 8 bytes an entry), counted as half a parameter.
        ins = [int(shape[0]) if shape else 1, *channels[:-1]]
        convs = sum(2 * 9 * a * b for a, b in zip(ins, channels, strict=False))
        terms += [
            (convs, "model.channels"),
            (9 * code_dim * channels[-1] if channels else 0, "model.code_dim"),
            (int(model.get("num_codes") or 0) * code_dim // codebook_share, "model.num_codes"),
            (2 * int(model.get("res_blocks") or 0) * 9 * widest * widest, "model.res_blocks"),
        ]
    elif model.get("name") == "ddpm":
        unet = model.get("unet") or {}
        base = int(unet.get("base_channels") or 0)
        blocks = int(unet.get("num_res_blocks") or 0)
        # Each residual block has two 3x3 convolutions of width base * mult.
        convs = sum(2 * 9 * (base * m) ** 2 * blocks for m in _ints(unet.get("channel_mults")))
        terms.append((convs, "model.unet.base_channels"))
    else:
        k = int(model.get("latent_dim") or 0)
        if model.get("arch") == "conv":
            conv = model.get("conv") or {}
            channels = _ints(conv.get("channels"))
            fc = int(conv.get("fc_dim") or 0)
            side = shape[1] // 2 ** len(channels) if len(shape) == 3 and channels else 0
            features = channels[-1] * side * side if channels else 0
            terms += [(2 * features * fc, "model.conv.fc_dim"), (2 * fc * k, "model.latent_dim")]
        else:
            hidden = _ints((model.get("mlp") or {}).get("hidden"))
            first, last = (hidden[0], hidden[-1]) if hidden else (pixels, pixels)
            inner = sum(a * b for a, b in zip(hidden, hidden[1:], strict=False))
            terms += [
                (2 * pixels * first, "model.mlp.hidden"),
                (2 * inner, "model.mlp.hidden"),
                (2 * last * k, "model.latent_dim"),
            ]
    total = sum(n for n, _ in terms)
    return total, max(terms)[1] if terms else "model"


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

"""The measured training loops, side by side: genlab's own objects (`genlab_loop`), the compute
floor with the data in one tensor (`plain_loop`), and seed 001's torchvision DataLoader loop
(`seed_loop`), all training the same model (`build_model`) on the same data.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from harness import WARMUP, timed_fit


# -- data --------------------------------------------------------------------------------------
def fashion_root() -> str:
    """A data dir with Fashion-MNIST: the user's, else Debian's package staged into a temp dir."""
    return os.environ.get("GENLAB_DATA_DIR", str(Path(tempfile.gettempdir()) / "genlab-bench"))


def cifar_like_root() -> str:
    """CIFAR-10 cannot be downloaded here: 50k random images in the genuine pickled layout."""
    import numpy as np

    from genlab.data.formats import write_cifar10

    root = Path(tempfile.gettempdir()) / "genlab-bench-cifar"
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        rng = np.random.default_rng(0)
        train = (
            rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 50000),
        )
        test = (
            rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 10000),
        )
        write_cifar10(root, train, test)
    return str(root)


def torchvision_layout(root: str) -> None:
    """Fashion-MNIST's uncompressed IDX files in <root>/FashionMNIST/raw, where torchvision's
    own class reads them (genlab reads them wherever they are, e.g. Debian's gzipped copy)."""
    from genlab.data.formats import write_idx
    from genlab.data.module import data_config
    from genlab.data.sources import load_split

    raw = Path(root) / "FashionMNIST" / "raw"
    system_dirs = list(data_config("fashion_mnist").system_dirs)
    for train, split in ((True, "train"), (False, "t10k")):
        if (raw / f"{split}-labels-idx1-ubyte").is_file():
            continue
        images, labels = load_split("fashion_mnist", root, train=train, system_dirs=system_dirs)
        write_idx(raw / f"{split}-images-idx3-ubyte", images[:, 0].numpy())
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels.numpy().astype("uint8"))


def datamodule(name: str, batch_size: int):
    from genlab.data import ImageDataModule

    root = cifar_like_root() if name == "cifar10" else fashion_root()
    dm = ImageDataModule.from_name(name, root, batch_size=batch_size, val_fraction=0.0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# -- models ------------------------------------------------------------------------------------
def build_model(kind: str):
    from genlab.models import AE, DDPM, VAE

    if kind == "vae":
        return VAE(image_shape=[1, 28, 28], latent_dim=16)
    if kind == "ae":
        return AE(image_shape=[1, 28, 28], latent_dim=9, mlp={"hidden": [128, 64, 36, 18]})
    if kind == "conv_vae":
        return VAE(image_shape=[3, 32, 32], latent_dim=64, arch="conv", likelihood="gaussian")
    if kind == "ddpm_small":
        return DDPM(image_shape=[1, 28, 28], ema_decay=None, warmup_steps=1)
    if kind == "ddpm_cpu":
        # experiment=ddpm_fashion_cpu's (and the speedrun's) 0.64M-parameter U-Net.
        unet = {"base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1}
        unet |= {"attn_resolutions": [], "dropout": 0.0}
        return DDPM(image_shape=[1, 28, 28], unet=unet, ema_decay=None, warmup_steps=1)
    if kind == "ddpm_tiny":
        # The paper U-Net's layout (two res blocks, attention at one resolution) at a size a CPU
        # steps in milliseconds: what `gpu_check.py --dry-run` measures instead.
        unet = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 2}
        unet["attn_resolutions"] = [14]
        return DDPM(image_shape=[1, 28, 28], unet=unet, ema_decay=None, warmup_steps=1)
    if kind == "ddpm_paper":
        from genlab.nets.unet import PRESETS

        # Ho et al.'s CIFAR-10 U-Net; the DDPM takes channels and image size from image_shape.
        derived = ("in_channels", "image_size")
        unet = {k: v for k, v in PRESETS["ddpm_cifar10"].items() if k not in derived}
        return DDPM(image_shape=[3, 32, 32], unet=unet, ema_decay=None, warmup_steps=1)
    raise ValueError(kind)


# -- the three training loops ------------------------------------------------------------------
def genlab_loop(kind, data, batch_size, steps, device, precision="32-true", **switches):
    """train.py's own objects: the DataModule, the LightningModule (with the `speed:` switches
    applied as train.py applies them) and a Trainer."""
    model = build_model(kind)
    model.apply_speed_switches(**switches)
    dm = datamodule(data, batch_size)
    clip = gradient_clip(model)
    return (
        steps
        * batch_size
        / timed_fit(model, device, steps, precision, gradient_clip_val=clip, datamodule=dm)
    )


def gradient_clip(model) -> float | None:
    """genlab clips a DDPM's gradient norm at 1 (trainer.gradient_clip_val from
    conf/_ddpm_trainer_.yaml, Ho et al.); the latent models are not clipped."""
    return 1.0 if model.capabilities.diffusion else None


def plain_loop(
    kind,
    data,
    batch_size,
    steps,
    device,
    fused=True,
    precision="32-true",
    compile=False,
    channels_last=False,
):
    """The compute floor: the data already in one tensor, index a batch, step. No framework.
    Same model, loss and update as genlab's: the fused Adam kernel genlab's default picks (off
    under mixed precision, as genlab's build_optimizer does), for the DDPM its gradient-norm
    clipping, bf16 autocast around the step as Lightning's bf16-mixed, and the `speed:`
    switches applied by the model's own method."""
    if precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"plain_loop runs 32-true or bf16-mixed, not {precision!r}")
    mixed = precision == "bf16-mixed"
    dm = datamodule(data, batch_size)
    images, labels = (t.to(device) for t in dm.splits["train"])
    model = build_model(kind).to(device)
    model.apply_speed_switches(compile=compile, channels_last=channels_last)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=model.optimizer_cfg["lr"], fused=fused and not mixed
    )
    clip = gradient_clip(model)
    order = torch.randperm(len(images), device=device)
    for i in range(WARMUP + steps):
        if i == WARMUP:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        idx = order[(i * batch_size) % (len(images) - batch_size) :][:batch_size]
        x = images[idx].float() / 255
        with torch.autocast(device, dtype=torch.bfloat16, enabled=mixed):
            loss, _ = model.compute_terms(x, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def seed_loop(kind, data, batch_size, steps, device):
    """Seed 001's pipeline: torchvision dataset with ToTensor (one PIL image at a time) and a
    DataLoader, feeding the same model, with the seed's optimizer (torch's default Adam)."""
    import torchvision
    from torchvision import transforms

    torchvision_layout(fashion_root())
    cls = torchvision.datasets.FashionMNIST
    dataset = cls(fashion_root(), train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = build_model(kind).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    it, done = iter(loader), 0
    while done < WARMUP + steps:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if done == WARMUP:
            start = time.perf_counter()
        loss, _ = model.compute_terms(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)

"""One job: a loaded run, the options, and the helpers every task shares (seeded generator,
batching, test images, encoding and decoding, saving grids)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genlab import GenlabError
from genlab.runs import LoadedRun
from genlab.sample.options import check_label
from genlab.sample.writer import write_outputs


# -- one job: a loaded run, the options, and shared helpers ----------------------------------------
@dataclass
class Job:
    run: LoadedRun
    opts: DictConfig
    n: int | None
    out_dir: Path

    @property
    def model(self):
        return self.run.model

    @property
    def caps(self):
        """What the model can do (genlab.models.base.Capabilities): tasks branch on these."""
        return self.run.model.capabilities

    @property
    def device(self):
        return self.run.model.device

    def generator(self, device=None):
        """A fresh generator seeded from `seed`: pictures never depend on global RNG state."""
        import torch

        return torch.Generator(device=device or self.device).manual_seed(int(self.opts.seed))

    def progress(self, iterable, desc: str, total: int | None = None):
        from tqdm.auto import tqdm

        # disable=None: a bar on a terminal, silence in logs and tests
        return tqdm(iterable, desc=desc, total=total, disable=None, leave=False)

    def chunks(self, total: int, desc: str):
        size = int(self.opts.batch_size)
        starts = range(0, total, size)
        return ((s, s + size) for s in self.progress(starts, desc, total=len(starts)))

    def test_split(self):
        """The whole test split: uint8 images and labels, on the CPU."""
        return self.run.test_split(self.opts.dataset, self.opts.data_dir)

    def test_images(self, count: int):
        """`count` test images on the device as floats in [0, 1], with their labels. The choice
        is a seeded random subset, the same for any run on the same data."""
        import torch

        images, labels = self.test_split()
        if count > len(images):
            raise GenlabError(
                f"task={self.opts.task} with n={self.n} needs {count} test images but the test "
                f"split has {len(images)}: choose a smaller n."
            )
        pick = torch.randperm(len(images), generator=self.generator("cpu"))[:count]
        return images[pick].to(self.device).float() / 255.0, labels[pick].to(self.device)

    def at_most(self, count: int | None, images, labels):
        """A seeded random subset of `count` images (all of them if count is None)."""
        import torch

        if count is None or count >= len(images):
            return images, labels
        pick = torch.randperm(len(images), generator=self.generator("cpu"))[:count]
        return images[pick], labels[pick]

    def encode(self, images, labels, desc: str = "encoding"):
        """Latent means (VAE, CVAE) or codes (AE) of uint8 or float images, batch by batch."""
        import torch

        out = []
        with torch.no_grad():
            for a, b in self.chunks(len(images), desc):
                x = images[a:b].to(self.device)
                x = x.float() / 255.0 if x.dtype == torch.uint8 else x
                out.append(self.model.encode_mean(x, labels[a:b].to(self.device)))
        return torch.cat(out)

    def decode(self, z, labels=None, desc: str = "decoding"):
        """Images in [0, 1] (on the CPU) for latent codes z, batch by batch."""
        import torch

        out = []
        with torch.no_grad():
            for a, b in self.chunks(len(z), desc):
                y = None if labels is None else labels[a:b]
                out.append(self.model.decode_images(z[a:b], y).cpu())
        return torch.cat(out)

    def class_label(self) -> int:
        """The class `label=` picks (null: class 0), checked against the model's classes."""
        label = self.opts.label if self.opts.label is not None else 0
        check_label(label, self.model.num_classes)
        return label

    def labels_for(self, count: int, per: int = 1):
        """Labels of `count` groups of `per` images: None for an unconditional model; all
        `label=`, else classes cycling over the groups (one class per column of a grid whose
        width is a multiple of the class count)."""
        import torch

        if not self.caps.conditional:
            return None
        if self.opts.label is None:
            labels = self.model.preview_labels(count)
        else:
            labels = torch.full((count,), self.class_label(), device=self.device)
        return labels.repeat_interleave(per)

    def sample_grid(self) -> tuple[int, int]:
        """(count, columns) of task=samples: n rows, and one class per column when the labels
        cycle over the classes (a conditional model without label=), else n columns: the
        layout of the run's own samples.png (genlab.viz.grids.sample_grid_shape)."""
        from genlab.viz.grids import sample_grid_shape

        cycles = self.caps.conditional and self.opts.label is None
        return sample_grid_shape(self.n, self.model.num_classes if cycles else None, self.n)

    def save_grid(self, images, nrow: int, stem: str | None = None) -> list[Path]:
        return self.save_grids({".png": (images, nrow)}, stem)

    def save_grids(self, grids: Mapping[str, tuple[Any, int]], stem: str | None = None):
        """Several grids {suffix: (images, nrow)} as `<stem><suffix>` files under one free name
        (e.g. denoise_reverse.png and denoise_forward.png, then denoise-1_reverse.png, ...)."""
        from torchvision.utils import save_image

        from genlab.viz.grids import make_grid

        def writer(images, nrow):
            grid = make_grid(images, nrow)
            return lambda p: save_image(grid, p, format="png")

        return write_outputs(
            self.out_dir,
            stem or self.opts.task,
            {suffix: writer(images, nrow) for suffix, (images, nrow) in grids.items()},
            self.opts.overwrite,
        )


def slerp(a, b, t):
    """Spherical interpolation: for Gaussian codes it keeps the norm typical of the prior,
    where a straight line through the origin's low-density shell would not."""
    import torch

    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1).unsqueeze(-1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    nearly_parallel = sin.abs() < 1e-6
    safe = torch.where(nearly_parallel, torch.ones_like(sin), sin)
    spherical = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / safe
    return torch.where(nearly_parallel, (1 - t) * a + t * b, spherical)

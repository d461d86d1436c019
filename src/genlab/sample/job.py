"""One job: a loaded run, the options, and the helpers every task shares (seeded generator,
batching, test images, encoding and decoding, saving grids)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genlab import GenlabError
from genlab.sample.loader import LoadedRun
from genlab.sample.options import _invalid
from genlab.sample.writer import write_outputs

# interpolate's images per row when `steps` is null (conf/sample.yaml): `steps` has no single
# default, since for a DDPM's other tasks null means the model's own sample_steps.
INTERPOLATE_STEPS = 10


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
                code = self.model.encode(x, labels[a:b].to(self.device))
                out.append(code[0] if isinstance(code, tuple) else code)
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

    @property
    def interpolants(self) -> int:
        """interpolate's images per row, both ends included: `steps`, else INTERPOLATE_STEPS.
        One place for every model, so no handler can read the null default as a number."""
        steps = self.opts.steps
        return INTERPOLATE_STEPS if steps is None else int(steps)

    def class_label(self) -> int:
        label = self.opts.label if self.opts.label is not None else 0
        if label >= self.model.num_classes:
            raise _invalid("label", label, f"a class index in 0..{self.model.num_classes - 1}")
        return label

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

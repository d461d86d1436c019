"""Latent diffusion (Rombach et al. 2022): a DDPM trained on the latent codes of a trained
autoencoder run (`model=latent_ddpm model.autoencoder=<run dir>`), its samples decoded through
that autoencoder. It makes the autoencoders generative: a plain AE has no prior (decoding a
random z lands in the gaps between the codes of real images), a VQ-VAE has none over its code
grids; this learns one.

- The autoencoder is loaded read-only from its run (genlab.runs.load_run: the best
  checkpoint), frozen and in eval mode. It is kept outside the module tree, so it is not in
  `parameters()` (the optimizer), `state_dict()` (checkpoints), `train()` or the EMA's
  average; `_apply` moves it with the model between devices and dtypes. The checkpoint's
  hyperparameters record its path and the sha256 of its checkpoint file, and loading rebuilds
  it from there: a run that moved or changed is an `AutoencoderUnavailable` error.
- Latents: `encode_mean`, i.e. the AE's code, the VAE's posterior mean (not a sample: the
  prior then models the means, which the decoder maps to its sharpest images), the VQ-VAE's
  quantised grid [code_dim, h, w] (the continuous vectors of the chosen codes).
- Normalisation: (z - mean) / std, per latent dimension for flat codes and per code channel
  for grids (so the U-Net sees every grid cell alike), measured once on the whole training
  split (uint8 / 255, no augmentation) when a fresh fit starts, and kept as buffers in every
  checkpoint. An AE's code is neither centred nor of unit scale, so the mean is removed too
  (Rombach et al.'s single scale factor assumes a KL-regularised, centred latent).
- Training, loss, EMA, warm-up and sampling are the pixel DDPM's (genlab.models.ddpm; the default
  prediction is v, its spec says why): only
  the denoiser (an MLP for flat codes, genlab.nets.denoiser; the U-Net for grids), what x0 is
  (normalised latents instead of images in [-1, 1]) and how samples become images differ.
- Sampled VQ-VAE grids are snapped to their nearest codes before decoding
  (`snap_to_codes=true`, default): its decoder only ever saw codebook vectors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from genlab import GenlabError
from genlab.models import model_class
from genlab.models.catalog import autoencoders
from genlab.models.ddpm.model import DDPM
from genlab.models.latent_ddpm.spec import LatentDDPMSpec
from genlab.nets.denoiser import MLPDenoiser
from genlab.nets.unet import UNet
from genlab.resources import file_sha256
from genlab.runs import RunUnavailable


class AutoencoderUnavailable(RunUnavailable):
    """The autoencoder run a trained latent DDPM was built on is gone or has changed."""


class LatentDDPM(DDPM):
    spec_class = LatentDDPMSpec

    # -- the autoencoder and the denoiser --------------------------------------------------------
    def build_net(self) -> torch.nn.Module:
        """Called by DDPM.__init__: loads the autoencoder, then a denoiser of its latent shape."""
        ae = self._load_autoencoder()
        grid = getattr(ae, "grid_shape", None)  # a VQ-VAE's [code_dim, h, w]
        self.noise_shape = tuple(grid) if grid else (int(ae.capabilities.latent_dim),)
        stat_shape = (grid[0], 1, 1) if grid else self.noise_shape
        # std 0 marks "not measured yet" (on_fit_start measures it; a checkpoint restores it).
        self.register_buffer("latent_mean", torch.zeros(stat_shape))
        self.register_buffer("latent_std", torch.zeros(stat_shape))
        labels = self.spec.num_classes if self.spec.conditional else None
        if not grid:
            return MLPDenoiser(self.noise_shape[0], self.spec.mlp.hidden, num_classes=labels)
        channels, h, w = grid
        try:
            if h != w:
                raise ValueError(f"the U-Net takes square inputs, the grid is {h}x{w}")
            return UNet(
                in_channels=channels,
                image_size=h,
                num_classes=labels,
                **dataclasses.asdict(self.spec.unet),
            )
        except ValueError as err:
            raise GenlabError(
                f"model.unet does not fit the autoencoder's latent grid {list(grid)}: {err}."
            ) from None

    @classmethod
    def with_autoencoder(cls, spec: LatentDDPMSpec, autoencoder) -> LatentDDPM:
        """The latent DDPM of `spec` on an autoencoder already built and loaded (an export's,
        genlab.export): no run is read, `spec.autoencoder` only says where it came from."""
        model = cls.__new__(cls)
        model.__dict__["_autoencoder"] = autoencoder  # what _load_autoencoder takes
        model.__init__(spec)
        return model

    def _load_autoencoder(self):
        spec = self.spec
        ae = self.__dict__.get("_autoencoder")
        if ae is None:
            ae, kind = self._autoencoder_run()
        else:
            self.autoencoder_checkpoint, kind = None, ae.kind
        caps = ae.capabilities
        if not caps.encoder or caps.conditional or caps.diffusion:
            raise GenlabError(
                f"model.autoencoder={spec.autoencoder} is a {kind} run: the latent prior needs "
                "an unconditional autoencoder with an encoder and a decoder "
                f"({', '.join(autoencoders())})."
            )
        if tuple(ae.image_shape) != self.image_shape:
            raise GenlabError(
                f"model.autoencoder={spec.autoencoder} takes images of shape "
                f"{list(ae.image_shape)}, but this run's data has {list(self.image_shape)}: "
                "train the latent_ddpm on the data the autoencoder was trained on."
            )
        ae.eval().requires_grad_(False)
        # Outside nn.Module's registry on purpose (see the module docstring).
        self.__dict__["_autoencoder"] = ae
        return ae

    def _autoencoder_run(self):
        """(the autoencoder of the run spec.autoencoder names, its type), loaded as data
        (genlab.runs: nothing in the run can import or instantiate anything)."""
        from genlab.runs import load_run

        spec = self.spec
        if not spec.autoencoder:
            raise GenlabError(
                "model=latent_ddpm needs the trained autoencoder it models the latents of: "
                "model.autoencoder=<run dir of an ae, vae or vqvae run, or its .ckpt>."
            )
        path = Path(spec.autoencoder).expanduser().resolve()
        recorded = spec.autoencoder_sha256
        try:  # never another latent_ddpm: a run naming itself would load without end
            run = load_run(path, {name: model_class(name) for name in autoencoders()})
        except GenlabError as err:
            if recorded:  # a trained model whose autoencoder is gone
                raise AutoencoderUnavailable(
                    f"This latent_ddpm was trained on the autoencoder run {path}, which no longer "
                    f"loads ({err}) It was moved or deleted: put it back at that path (the "
                    "latent_ddpm checkpoint holds only the prior, not the autoencoder; an "
                    "export of it, python -m genlab.export, holds both)."
                ) from None
            raise GenlabError(f"model.autoencoder={spec.autoencoder}: {err}") from None
        digest = file_sha256(run.checkpoint)
        if recorded and digest != recorded:
            raise AutoencoderUnavailable(
                f"The autoencoder run {path} has changed since this latent_ddpm was trained on "
                f"it: its checkpoint {run.checkpoint.name} has sha256 {digest[:16]}..., the one "
                f"it was trained on {recorded[:16]}... (retrained or resumed since?). Restore "
                "that checkpoint, or train a new latent_ddpm on the run as it is now."
            )
        self.autoencoder_checkpoint = run.checkpoint
        # What the checkpoint records of where the latents came from.
        spec.autoencoder, spec.autoencoder_sha256 = str(path), digest
        self.hparams.update(autoencoder=str(path), autoencoder_sha256=digest)
        return run.model, run.name

    @property
    def autoencoder(self):
        """The frozen autoencoder (eval mode, no gradients, not a submodule)."""
        return self.__dict__["_autoencoder"]

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        ae = self.__dict__.get("_autoencoder")
        if ae is not None:  # .to(device) / .double() move the autoencoder along
            ae._apply(fn, *args, **kwargs)
        return self

    # -- latents ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Latents of images x in the autoencoder's units, in the denoiser's shape."""
        return self.autoencoder.encode_mean(x).reshape(len(x), *self.noise_shape).float()

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean) / self.latent_std

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std + self.latent_mean

    @property
    def scale_measured(self) -> bool:
        return bool((self.latent_std > 0).all())

    @torch.no_grad()
    def measure_scale(self, images: torch.Tensor, batch_size: int = 256) -> None:
        """Per-dimension (flat) or per-channel (grid) mean and std of the latents of uint8
        `images`, accumulated in float64 over batches (the whole split's latents of a VQ-VAE
        would take gigabytes at once); the std is the unbiased one, floored at 1e-6 so a
        latent dimension the autoencoder never varies divides by no zero."""
        dims = [0] if len(self.noise_shape) == 1 else [0, 2, 3]
        total = torch.zeros(self.latent_mean.shape, dtype=torch.float64, device=self.device)
        squares, count = torch.zeros_like(total), 0
        for a in range(0, len(images), batch_size):
            x = images[a : a + batch_size].to(self.device).float() / 255
            z = self.encode_latents(x).double()
            total += z.sum(dims).view_as(total)
            squares += z.pow(2).sum(dims).view_as(total)
            count += z.numel() // total.numel()
        mean = total / count
        var = (squares - count * mean.pow(2)) / max(1, count - 1)
        self.latent_mean.copy_(mean.float())
        self.latent_std.copy_(var.clamp_min(0).sqrt().clamp_min(1e-6).float())

    # -- training --------------------------------------------------------------------------------
    def compute_terms(self, x, y, generator: torch.Generator | None = None):
        return self.diffusion_loss(self.normalise(self.encode_latents(x)), y, generator)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.scale_measured:  # resumed: the checkpoint's scale, restored before this hook
            return
        self.measure_scale(self.trainer.datamodule.splits["train"][0])
        # Lightning's weight averaging (the EMA) copied this module in its setup, before the
        # scale existed: give its copy the measured buffers too, or validation (which swaps the
        # average in) would see unnormalised latents until the first update.
        for callback in self.trainer.callbacks:
            average = getattr(callback, "_average_model", None)
            if average is not None:
                average.module.latent_mean.copy_(self.latent_mean)
                average.module.latent_std.copy_(self.latent_std)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        recorded = (checkpoint.get("hyper_parameters") or {}).get("autoencoder_sha256")
        if recorded and recorded != self.spec.autoencoder_sha256:  # a resume onto another AE
            raise AutoencoderUnavailable(
                f"The checkpoint's latent prior was trained on an autoencoder checkpoint of "
                f"sha256 {recorded[:16]}..., but {self.autoencoder_checkpoint} has "
                f"{self.spec.autoencoder_sha256[:16]}...: resume with the autoencoder it was "
                "trained on."
            )
        super().on_load_checkpoint(checkpoint)

    # -- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Decode sampled (normalised) latents through the autoencoder: images in [0, 1]."""
        ae, z = self.autoencoder, self.denormalise(x)
        if self.spec.snap_to_codes and hasattr(ae, "quantizer"):
            flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            z = ae.quantizer.nearest(flat).view(len(z), *z.shape[2:])  # code indices
        return ae.decode_images(z)

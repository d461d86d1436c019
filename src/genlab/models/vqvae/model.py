"""VQ-VAE (van den Oord et al. 2017): a conv encoder maps an image to a grid of vectors z_e
(7x7 for 28x28 images), each is replaced by its nearest codebook entry e_k, and the decoder
maps the grid of codes z_q back to the image.

- Quantisation has no gradient: the straight-through estimator passes the decoder's gradient
  with respect to z_q unchanged to z_e (z_e + sg(z_q - z_e) is z_q forward, z_e backward).
- The commitment term beta_commit * ||z_e - sg(z_q)||^2 keeps the encoder near its codes.
- The codebook follows the encoder outputs assigned to it, by exponential moving averages
  (codebook_update=ema, the paper's appendix: counts N_k and sums m_k, e_k = m_k / N_k with
  Laplace-smoothed N_k so a rarely chosen code never divides by ~0), or by the codebook loss
  ||sg(z_e) - z_q||^2 (codebook_update=loss).
- A code no encoder output chose for `dead_code_steps` training steps is re-initialised from a
  random encoder output of the batch: without that, codes that start far from the data are
  never chosen and never move, and the usable codebook shrinks.

Every term is per image, summed over pixels / grid cells, like the other latent models:
`recon` is -log p(x|z_q) in nats with the same likelihoods (bernoulli for the MNIST family), so
val/recon compares with an AE's, and loss = recon + beta_commit * commitment (+ codebook).
`perplexity` = exp(entropy of the batch's code usage) and `codes_used` (distinct codes in the
batch) say how much of the codebook is in use; `train/codes_restarted` counts the dead codes
re-initialised in the epoch.

Not generative on its own: a grid of codes drawn uniformly decodes to nothing like the data;
a prior over code grids (PixelCNN in the paper, or a latent diffusion model) makes it one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genlab.models.base import Capabilities, GenerativeModule
from genlab.models.vqvae.spec import VQVAESpec
from genlab.nets.conv import stage_sizes
from genlab.objectives import reconstruction_nll
from genlab.viz.grids import originals_above_reconstructions


class Residual(nn.Module):
    """h + conv1x1(relu(conv3x3(relu(h)))): the paper's residual block."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.block(h)


def grid_encoder(image_shape, channels, res_blocks: int, code_dim: int) -> nn.Sequential:
    """Image -> [code_dim, h, w] grid: stride-2 3x3 convs (28 -> 14 -> 7), residual blocks, and
    a 1x1 conv to the code dimension."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip([image_shape[0], *channels[:-1]], channels, strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
    layers += [Residual(channels[-1]) for _ in range(res_blocks)]
    layers += [nn.ReLU(), nn.Conv2d(channels[-1], code_dim, 1)]
    return nn.Sequential(*layers)


def grid_decoder(image_shape, channels, res_blocks: int, code_dim: int) -> nn.Sequential:
    """[code_dim, h, w] grid -> image logits, retracing the encoder's sizes exactly (the
    output padding of each transposed conv lands on the encoder's size at that stage, as in
    genlab.nets.conv)."""
    c, h, w = image_shape
    hs, ws = stage_sizes(h, len(channels)), stage_sizes(w, len(channels))
    layers: list[nn.Module] = [nn.Conv2d(code_dim, channels[-1], 3, padding=1)]
    layers += [Residual(channels[-1]) for _ in range(res_blocks)]
    layers.append(nn.ReLU())
    outs = [*reversed(channels[:-1]), c]
    for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs, strict=True)):
        pad = (hs[-2 - i] - (2 * hs[-1 - i] - 1), ws[-2 - i] - (2 * ws[-1 - i] - 1))
        layers.append(nn.ConvTranspose2d(c_in, c_out, 3, 2, padding=1, output_padding=pad))
        if i < len(channels) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _sum_across_ranks(*tensors: torch.Tensor) -> None:
    """Under DDP every rank must apply the same codebook update: sum the batch statistics."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for t in tensors:
            torch.distributed.all_reduce(t)


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code usage `counts` [K]: K when every code is used equally, 1 when
    one code takes everything (0 log 0 = 0)."""
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class VectorQuantizer(nn.Module):
    """The codebook [num_codes, code_dim]: nearest-code lookup with the straight-through
    gradient, and (in training) its EMA update and dead-code restarts."""

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        update: str = "ema",
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_steps: int = 100,
    ):
        super().__init__()
        self.num_codes, self.update_rule = num_codes, update
        self.decay, self.eps, self.dead_code_steps = decay, eps, dead_code_steps
        init = torch.empty(num_codes, code_dim).uniform_(-1 / num_codes, 1 / num_codes)
        if update == "ema":
            # A buffer: the moving averages, not the optimizer, move it.
            self.register_buffer("codebook", init)
            # Start as if each code had been chosen once at its initial value, so e_k = m_k / N_k
            # holds from the first step.
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        # Training steps since each code was last chosen (in the checkpoint, for resumes).
        self.register_buffer("idle_steps", torch.zeros(num_codes, dtype=torch.long))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean distance) of each row of flat [N, D]."""
        codebook = self.codebook.detach().float()
        flat = flat.detach().float()
        distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)
        return distance.argmin(1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors of an index grid [B, h, w] as a grid [B, D, h, w]."""
        return self.codebook[indices].permute(0, 3, 1, 2)

    def forward(self, z_e: torch.Tensor):
        """(straight-through z_q [B, D, h, w], indices [B, h, w], {name: per-image term},
        code counts [K]) for the encoder grid z_e [B, D, h, w]."""
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        indices = self.nearest(flat).view(b, h, w)
        z_q = self.lookup(indices).to(z_e.dtype)
        terms = {"commitment": (z_e - z_q.detach()).pow(2).flatten(1).sum(1)}
        if self.update_rule == "loss":
            terms["codebook"] = (z_e.detach() - z_q).pow(2).flatten(1).sum(1)
        counts = torch.bincount(indices.flatten(), minlength=self.num_codes)
        # Forward: z_q. Backward: d/dz_e = d/dz_q (the quantiser is skipped).
        z_st = z_e + (z_q - z_e).detach()
        return z_st, indices, terms, counts

    @torch.no_grad()
    def update(self, z_e: torch.Tensor, indices: torch.Tensor) -> int:
        """One training step's codebook update from the encoder outputs z_e and their codes;
        returns how many dead codes were restarted."""
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]).float()
        idx = indices.flatten()
        counts = torch.bincount(idx, minlength=self.num_codes).float()
        sums = torch.zeros_like(self.codebook, dtype=torch.float).index_add_(0, idx, flat)
        _sum_across_ranks(counts, sums)
        if self.update_rule == "ema":
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            # Laplace smoothing: (N_k + eps) / (n + K eps) * n keeps the total n and keeps
            # every count above 0.
            n = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        return self._restart_dead(flat, counts > 0)

    def _restart_dead(self, flat: torch.Tensor, used: torch.Tensor) -> int:
        if not self.dead_code_steps:
            return 0
        self.idle_steps.add_(1).masked_fill_(used, 0)
        dead = (self.idle_steps >= self.dead_code_steps).nonzero().squeeze(1)
        if len(dead) == 0:
            return 0
        fresh = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(fresh, src=0)  # the same new codes on every rank
        self.codebook.data[dead] = fresh.to(self.codebook.dtype)
        if self.update_rule == "ema":  # the averages restart at the new code, as if chosen once
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0
        self.idle_steps[dead] = 0
        return len(dead)


class VQVAE(GenerativeModule):
    metric_names = ("loss", "recon", "commitment", "codebook", "mse", "perplexity", "codes_used")
    networks = ("encoder", "decoder")
    spec_class = VQVAESpec

    def __init__(self, spec: VQVAESpec | None = None, **fields):
        super().__init__(spec, **fields)
        spec = self.spec
        self.num_classes, self.likelihood = spec.num_classes, spec.likelihood
        self.beta_commit = spec.beta_commit
        self.encoder = grid_encoder(self.image_shape, spec.channels, spec.res_blocks, spec.code_dim)
        self.decoder = grid_decoder(self.image_shape, spec.channels, spec.res_blocks, spec.code_dim)
        self.quantizer = VectorQuantizer(
            spec.num_codes,
            spec.code_dim,
            spec.codebook_update,
            spec.codebook_decay,
            spec.codebook_eps,
            spec.dead_code_steps,
        )
        _, h, w = self.image_shape
        stages = len(spec.channels)
        self.grid_shape = (spec.code_dim, stage_sizes(h, stages)[-1], stage_sizes(w, stages)[-1])
        self.latent_dim = math.prod(self.grid_shape)  # the flattened grid of code vectors
        channels = self.image_shape[0]
        if spec.likelihood == "gaussian" and spec.gaussian_sigma is None:
            self.log_sigma = nn.Parameter(torch.full((channels,), math.log(0.1)))
        else:
            sigma = spec.gaussian_sigma if spec.gaussian_sigma is not None else 1.0
            self.register_buffer("log_sigma", torch.full((channels,), math.log(sigma)))
        self._restarted = 0  # dead codes restarted this epoch

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            generative=False,
            encoder=True,
            conditional=False,
            diffusion=False,
            gaussian_latent=False,
            latent_dim=self.latent_dim,
        )

    # -- codes and images ------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The code indices [n, h, w] (int64) of images x: what a prior over codes models."""
        z_e = self.encoder(x)
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        return self.quantizer.nearest(flat).view(len(x), *self.grid_shape[1:])

    def encode_mean(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The quantised code vectors of x, flattened to [n, code_dim * h * w]: the continuous
        code sample.py's tasks interpolate, scatter and decode."""
        return self.quantizer.lookup(self.encode(x)).flatten(1)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder logits from code indices [n, h, w] (integers), a grid of vectors
        [n, D, h, w], or such a grid flattened [n, D*h*w]. Vectors are decoded as given, not
        snapped to the codebook, so a line between two images' codes decodes smoothly."""
        if not z.is_floating_point():
            z = self.quantizer.lookup(z.long())
        z = z.reshape(len(z), *self.grid_shape)
        return self.decoder(z.to(self.quantizer.codebook.dtype))

    def decode_images(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.decode(z).float())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images decoded from the nearest codes of x."""
        return self.decode_images(self.encode(x))

    def recon_terms(self, logits: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "recon": reconstruction_nll(logits, x, self.likelihood, self.log_sigma),
            "mse": (torch.sigmoid(logits.float()) - x).pow(2).flatten(1).mean(1),
        }

    # -- training --------------------------------------------------------------------------------
    def compute_terms(self, x, y):
        z_e = self.encoder(x)
        z_q, indices, vq_terms, counts = self.quantizer(z_e)
        terms = self.recon_terms(self.decoder(z_q), x)
        terms.update(vq_terms)
        loss = (terms["recon"] + self.beta_commit * terms["commitment"]).mean()
        if "codebook" in terms:
            loss = loss + terms["codebook"].mean()
        # Batch statistics of the code usage, one value per image so epoch means weigh every
        # batch by its size.
        ones = torch.ones(len(x), device=x.device)
        terms["perplexity"] = perplexity(counts) * ones
        terms["codes_used"] = (counts > 0).sum().float() * ones
        if self.training and torch.is_grad_enabled():
            # After the loss is formed from the current codebook: the update is this step's.
            self._restarted += self.quantizer.update(z_e, indices)
        return loss, terms

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._restarted = 0

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # The same on every rank (restarts are decided from all-reduced counts).
        self.log("train/codes_restarted", float(self._restarted), on_epoch=True, sync_dist=True)

    def preview_images(self, x, y):
        return {"reconstructions": originals_above_reconstructions(x, self.reconstruct(x))}

"""The denoiser of flat latent codes (a latent DDPM over an AE's or VAE's z): an MLP that takes
x_t [B, dim] and the timestep and predicts eps / x0 / v [B, dim], with the U-Net's calling
convention net(x_t, t, y) so genlab.diffusion's loop and guidance drive it unchanged.

The time embedding (the U-Net's sinusoidal one, then an MLP, as in Ho et al.) is added to every
hidden layer's pre-activation, not only fed in once at the bottom: a code of 9 numbers carries
little signal next to a 256-wide layer, and the prediction must change with the noise level at
every depth. The last layer starts at zero, as the U-Net's output conv, so the untrained net
predicts 0 (the mean of eps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genlab.nets.unet import timestep_embedding


class MLPDenoiser(nn.Module):
    """net(x_t, t, y=None) -> [B, dim]. `num_classes`: a label embedding (one extra row, the
    null label of classifier-free guidance) added to the time embedding, as in the U-Net."""

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (256, 256, 256),
        time_dim: int = 128,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.dim, self.num_classes, self.time_dim = dim, num_classes, time_dim
        self.time_embed = nn.Sequential(
            nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.label_embed = nn.Embedding(num_classes + 1, time_dim) if num_classes else None
        widths = [dim, *(int(w) for w in hidden)]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.time_proj = nn.ModuleList(nn.Linear(time_dim, w) for w in widths[1:])
        self.out = nn.Linear(widths[-1], dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_embed(timestep_embedding(t, self.time_dim).to(x.dtype))
        if self.label_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            temb = temb + self.label_embed(y)
        elif y is not None:
            raise ValueError("labels were passed to an MLPDenoiser built without num_classes")
        h = x
        for layer, proj in zip(self.layers, self.time_proj, strict=True):
            h = nn.functional.silu(layer(h) + proj(temb))
        return self.out(h)

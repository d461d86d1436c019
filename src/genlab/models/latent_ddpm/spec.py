"""model=latent_ddpm's spec: keys, defaults, their meaning and rules (torch-free). Its
cross-field rules are the DDPM's but the U-Net's fit, checked once the autoencoder's latent
grid is known."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genlab.models.ddpm.spec import DDPMSpec
from genlab.specs import BOOL, DEFAULT_OPTIMIZER, MLPSpec, Rule, UNetSpec, spec_key


@dataclass
class LatentDDPMSpec(DDPMSpec):
    """A DDPM over the latent codes of a trained ae, vae or vqvae run, its samples decoded
    through that run (latent diffusion, Rombach et al. 2022): genlab.models.latent_ddpm."""

    _target_: str = "genlab.models.LatentDDPM"
    name: str = "latent_ddpm"
    # The trained autoencoder: its run dir (the best checkpoint) or a .ckpt. Required; loaded
    # frozen and read-only, never saved with this model's weights.
    autoencoder: str | None = spec_key(
        None,
        Rule(
            lambda v: isinstance(v, str) and v != "",
            "the path of a trained ae, vae or vqvae run (its run dir or a .ckpt)",
            "e.g. model.autoencoder=outputs/runs/<date>/<run>.",
        ),
    )
    # sha256 of its checkpoint file; null: recorded when the model is first built. A checkpoint
    # of this model holds it, and loading refuses an autoencoder checkpoint that differs.
    autoencoder_sha256: str | None = None
    clip_x0: bool = spec_key(False, BOOL)  # normalised latents are not bounded by [-1, 1]
    # v-prediction (Salimans & Ho 2022) rather than the pixel DDPM's eps: without the [-1, 1]
    # clip an eps-model's small error near t = T is divided by sqrt(alpha_bar_T) ~ 0.006 in
    # its x0 prediction, and the VQ-VAE's code grids diverged; v keeps
    # x0 = sqrt(ab) x_t - sqrt(1 - ab) v bounded (docs/experiments.md has the figures).
    prediction: str = spec_key("v", DDPMSpec.__dataclass_fields__["prediction"].metadata["rule"])
    # A 5x larger step than the paper's 2e-4 (the CPU DDPM preset's): the small denoisers of
    # a 10-epoch run were still far from converged at 2e-4.
    optimizer: dict[str, Any] = spec_key({**DEFAULT_OPTIMIZER, "lr": 1e-3})
    snap_to_codes: bool = spec_key(True, BOOL)  # VQ-VAE: sampled vectors -> nearest codes, decoded
    # Denoiser of flat latents (AE, VAE): an MLP of these widths, t added at every layer.
    mlp: MLPSpec = field(default_factory=lambda: MLPSpec(hidden=[256, 256, 256]))
    # Denoiser of code grids (VQ-VAE: 7x7 for 28x28): one level, no halving of the grid.
    unet: UNetSpec = field(default_factory=lambda: UNetSpec(64, [1], 2))
    test_bpd_images: int | None = spec_key(0, Rule(lambda v: v == 0, "0 (it is a bound on pixels)"))

    has_autoencoder = True
    test_metric_names = ()  # test_bpd_images is 0: the bound is one on pixels

    @classmethod
    def check_unet(cls, cfg: Any) -> None:
        """Its U-Net fits the autoencoder's latent grid: checked when the model is built."""

    @classmethod
    def parameters_lower_bound(cls, model: Mapping[str, Any], shape: list[int]) -> tuple[int, str]:
        # Its denoiser (an MLP or a U-Net) is sized by the autoencoder's latent, which is known
        # only once that run is loaded: no lower bound above 0 holds for every autoencoder.
        return 0, "model"


GENLAB_MODELS = (LatentDDPMSpec,)

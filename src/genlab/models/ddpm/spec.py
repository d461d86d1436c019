"""model=ddpm's spec: keys, defaults, their meaning and rules; its cross-field rules (a linear
schedule's T, sample_steps within T, guidance that needs a conditional model, a U-Net that fits
the image size); the metrics of its test stage and its memory estimate. Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import ListConfig

from genlab import GenlabError
from genlab.sampler_rules import MODEL_SAMPLER, check_model_sampler
from genlab.spec_rules import check_value, config_value
from genlab.specs import (
    BOOL,
    DEFAULT_OPTIMIZER,
    GUIDANCE,
    POSITIVE_INT,
    UNIT_INTERVAL,
    UNIT_INTERVAL_OPEN_RIGHT,
    ModelSpec,
    Rule,
    UNetSpec,
    ints,
    is_int,
    is_number,
    largest,
    one_of,
    spec_key,
)


@dataclass
class DDPMSpec(ModelSpec):
    """Denoising diffusion (Ho et al. 2020) with a small U-Net that trains on 28x28 on a CPU."""

    _target_: str = "genlab.models.DDPM"
    name: str = "ddpm"
    timesteps: int = spec_key(
        1000, Rule(POSITIVE_INT.ok, "an integer >= 1 (T)", "e.g. model.timesteps=1000.")
    )
    # Beta schedule: linear (1e-4 -> 0.02, Ho et al.) | cosine (Nichol & Dhariwal).
    schedule: str = spec_key("linear", one_of("linear", "cosine"))
    # What the network predicts: eps (Ho et al.) | x0 | v (Salimans & Ho).
    prediction: str = spec_key("eps", one_of("eps", "x0", "v"))
    # Reverse-process variance sigma_t^2: beta | beta_tilde (the posterior's).
    variance: str = spec_key("beta", one_of("beta", "beta_tilde"))
    # Training-loss weight per timestep: null = 1 (Ho et al.'s simple loss); a number gamma =
    # min-SNR-gamma (Hang et al. 2023; 5 in the paper): faster early progress, measured with
    # the deterministic samplers (docs/experiments.md).
    min_snr_gamma: float | None = spec_key(
        None,
        Rule(lambda v: v is None or (is_number(v) and v > 0), "a number > 0, or null: no weight"),
    )
    clip_x0: bool = spec_key(True, BOOL)  # clip the predicted x0 to [-1, 1] while sampling
    # Sampler steps: timesteps -> ancestral sampling (Algorithm 2, T network calls); fewer ->
    # DDIM with that many steps (Song et al. 2021); null = timesteps. Range: check, below.
    sample_steps: int | None = 100
    # Sampler of the model's own draws (the test stage's and evaluate='s FID samples, the
    # previews, sample.py's and genlab.load's default): a name of genlab.diffusion.SAMPLERS;
    # null = the rule above. An all-steps sampler (ddpm) ignores sample_steps.
    sampler: str | None = spec_key(None, MODEL_SAMPLER)
    eta: float = spec_key(0.0, UNIT_INTERVAL)  # DDIM stochasticity: 0 deterministic, 1 DDPM-like
    unet: UNetSpec = field(default_factory=UNetSpec)
    # Class-conditional: a label embedding added to the time embedding.
    conditional: bool = spec_key(False, BOOL)
    # Share of training labels replaced by "null" (for classifier-free guidance).
    cond_drop_prob: float = spec_key(0.1, UNIT_INTERVAL_OPEN_RIGHT)
    guidance_scale: float = spec_key(0.0, GUIDANCE)  # guidance weight w (needs conditional)
    # EMA of the weights, used for validation, test, sampling and the checkpoint. With a
    # warm-up: update n moves the average by max(1 - ema_decay, (1 + n)^-ema_power), so a
    # short run averages its recent weights, not its initial ones (diffusers' EMAModel, Karras
    # et al. 2022). null: no EMA.
    ema_decay: float | None = spec_key(
        0.9999,
        Rule(
            lambda v: v is None or (is_number(v) and 0 < v < 1),
            "a number in (0, 1), or null for no EMA",
        ),
    )
    ema_power: float = spec_key(
        2 / 3,
        Rule(
            lambda v: is_number(v) and 0 < v <= 1,
            "a number in (0, 1]",
            "e.g. model.ema_power=0.6667 (short runs) or 0.75 (long runs, Karras et al.).",
        ),
    )
    # Linear learning-rate warm-up in optimizer steps (paper: 5000, which a 10-epoch
    # Fashion-MNIST run of ~4,200 steps never leaves): the warmup_steps of the run's
    # scheduler= (model=ddpm picks warmup_constant, conf/scheduler/).
    warmup_steps: int = spec_key(
        500, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: no warm-up)")
    )
    # Test images scored with the full variational bound (T network calls each; null: all).
    test_bpd_images: int | None = spec_key(
        256, Rule(lambda v: v is None or (is_int(v) and v >= 0), "an integer >= 0, or null: all")
    )
    bpd_t_chunk: int = spec_key(10, POSITIVE_INT)  # timesteps per network call in the bound
    # Steps of the grids logged after validation: model.sampler's, or DDIM's when that has none.
    preview_steps: int = spec_key(50, POSITIVE_INT)
    # How often to log those grids (0: never).
    preview_every_n_epochs: int = spec_key(
        1, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0")
    )
    optimizer: dict[str, Any] = spec_key({**DEFAULT_OPTIMIZER, "lr": 2e-4})  # paper: Adam 2e-4

    # The variational bound in bits/dim and its parts, scored on test images (test_bpd_images).
    test_metric_names = ("bpd", "bpd_prior", "bpd_diffusion", "bpd_decoder")

    @classmethod
    def uses_labels(cls, model: Mapping[str, Any]) -> bool:
        return model.get("conditional", False) is True

    @classmethod
    def check(cls, cfg: Any, model: Mapping[str, Any]) -> None:
        timesteps = cfg.model.timesteps
        if config_value(cfg, "model.schedule", None) == "linear" and timesteps <= 20:
            raise GenlabError(
                f"Invalid config: model.timesteps={timesteps} with model.schedule=linear. The "
                "linear schedule scales its betas by 1000/T, so T <= 20 gives beta_T >= 1. Use "
                "model.timesteps > 20, or model.schedule=cosine."
            )
        check_value(
            cfg,
            "model.sample_steps",
            lambda v: v is None or (is_int(v) and 1 <= v <= timesteps),
            f"an integer between 1 and model.timesteps={timesteps}",
            f"Use {timesteps} for ancestral sampling or fewer (e.g. 50) for DDIM.",
        )
        check_model_sampler(
            config_value(cfg, "model.sampler", None), config_value(cfg, "model.eta", 0)
        )
        if config_value(cfg, "model.guidance_scale", 0) and not config_value(
            cfg, "model.conditional", False
        ):
            raise GenlabError(
                f"Invalid config: model.guidance_scale={cfg.model.guidance_scale} needs a "
                "class-conditional model: add model.conditional=true, or set "
                "model.guidance_scale=0."
            )
        cls.check_unet(cfg)

    @classmethod
    def check_unet(cls, cfg: Any) -> None:
        """The U-Net halves the image once per level after the first: it must fit."""
        mults = config_value(cfg, "model.unet.channel_mults", [1])
        _, height, width = cfg.data.image_shape
        factor = 2 ** (len(mults) - 1)
        if height != width or height % factor:
            raise GenlabError(
                f"Invalid config: the U-Net with model.unet.channel_mults={list(mults)} halves "
                f"the image {len(mults) - 1} times, so the image size must be square and "
                f"divisible by {factor}, but {cfg.data.name} images are {height}x{width}. Use "
                "fewer levels (e.g. model.unet.channel_mults=[1,2,2] for 28x28)."
            )
        sizes = [height // 2**i for i in range(len(mults))]
        check_value(
            cfg,
            "model.unet.attn_resolutions",
            lambda v: isinstance(v, list | ListConfig) and all(r in sizes for r in v),
            f"a list drawn from the U-Net's feature-map sizes {sizes}",
        )

    @classmethod
    def parameters_lower_bound(cls, model: Mapping[str, Any], shape: list[int]) -> tuple[int, str]:
        unet = model.get("unet") or {}
        base = int(unet.get("base_channels") or 0)
        blocks = int(unet.get("num_res_blocks") or 0)
        # Each residual block has two 3x3 convolutions of width base * mult.
        convs = sum(2 * 9 * (base * m) ** 2 * blocks for m in ints(unet.get("channel_mults")))
        return largest([(convs, "model.unet.base_channels")])


GENLAB_MODELS = (DDPMSpec,)

"""One typed spec per model: its keys, their defaults, what each means and the values it accepts.

This file is the only place a model's defaults live (nanoGPT's GPTConfig is the example):
- Hydra composes `model=<name>` from the spec: `schema_node` turns it into the base node every
  conf/model/<name>.yaml extends (`- /_<name>_spec_@_here_`), and those files only wire keys
  to other config groups (the data's image shape, the eval group's sample counts).
- `genlab.config.validate` checks each key against the field's `accepts` rule, so a bad value
  fails before anything is built, with the key, the value and the accepted range in one line.
- The LightningModule is built from the spec (`VAE(**fields)` makes a VAESpec first), the
  checkpoint stores it as its hyperparameters, and loading rebuilds the model from it.

Torch-free: the CLI composes and checks configs without importing torch. Cross-field rules
(a U-Net level count that fits the image size, guidance that needs a conditional model) are in
genlab.config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genlab import GenlabError

# The value rules (genlab.spec_rules), re-exported: callers import them from here too.
from genlab.spec_rules import (
    BOOL,
    DEFAULT_OPTIMIZER,
    GUIDANCE,
    LATENT_DIM,
    NON_NEGATIVE,
    OPTIMIZER_RULES,
    POSITIVE_INT,
    UNIT_INTERVAL,
    UNIT_INTERVAL_OPEN_RIGHT,
    Rule,
    is_int,
    is_int_list,
    is_number,
)
from genlab.spec_rules import one_of as _one_of
from genlab.spec_rules import spec_key as _key


# -- networks ------------------------------------------------------------------------------------
@dataclass
class MLPSpec:
    # Hidden widths of the MLP encoder; the decoder mirrors them.
    hidden: list[int] = _key([512, 256], Rule(is_int_list, "a list of positive integers"))


@dataclass
class ConvSpec:
    # Channels of the stride-2 conv stages; the decoder mirrors them.
    channels: list[int] = _key(
        [32, 64, 128],
        Rule(lambda v: is_int_list(v, nonempty=True), "a non-empty list of positive integers"),
    )
    fc_dim: int = _key(256, POSITIVE_INT)  # width of the dense layer between features and z


@dataclass
class UNetSpec:
    """Ho et al.'s U-Net, sized for 28x28 data on a CPU (the paper's CIFAR-10 network is
    `UNET_DDPM_CIFAR10`, and conf/experiment/ddpm_cifar10.yaml)."""

    base_channels: int = _key(32, POSITIVE_INT)  # channels at full resolution (paper: 128)
    # One multiplier per resolution level (paper CIFAR-10: [1, 2, 2, 2]); the image size must
    # be divisible by 2^(levels - 1).
    channel_mults: list[int] = _key(
        [1, 2, 2],
        Rule(lambda v: is_int_list(v, nonempty=True), "a non-empty list of positive integers"),
    )
    num_res_blocks: int = _key(1, POSITIVE_INT)  # residual blocks per level (paper: 2)
    # Feature-map sizes with self-attention (paper: [16]); the middle block always has one.
    attn_resolutions: list[int] = _key([])
    dropout: float = _key(0.1, UNIT_INTERVAL_OPEN_RIGHT)  # in residual blocks (paper: 0.1)


# The paper's CIFAR-10 network: 35.7M parameters (the nets.unet.UNet defaults and its preset).
UNET_DDPM_CIFAR10 = UNetSpec(
    base_channels=128,
    channel_mults=[1, 2, 2, 2],
    num_res_blocks=2,
    attn_resolutions=[16],
    dropout=0.1,
)


# -- models --------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """Keys every model has."""

    _target_: str = ""  # the LightningModule class Hydra builds
    name: str = ""  # the model's config name (model=<name>), stored in every checkpoint
    # Input shape [channels, height, width]; conf/model/ takes it from the data config.
    image_shape: list[int] = _key(
        [1, 28, 28],
        Rule(
            lambda v: is_int_list(v) and len(list(v)) == 3,
            "a list [channels, height, width] of positive integers",
        ),
    )
    num_classes: int = _key(10, POSITIVE_INT)  # label count, used by conditional models
    optimizer: dict[str, Any] = _key(DEFAULT_OPTIMIZER)

    def hparams(self) -> dict[str, Any]:
        """The spec as plain data: what a checkpoint stores as its hyperparameters."""
        data = dataclasses.asdict(self)
        data.pop("_target_")
        return data


@dataclass
class LatentSpec(ModelSpec):
    """Keys the latent-variable models (AE, VAE, CVAE) share."""

    latent_dim: int = _key(16, LATENT_DIM)  # size of the latent code z (the seed's k)
    arch: str = _key("mlp", _one_of("mlp", "conv"))  # encoder/decoder backbone
    mlp: MLPSpec = field(default_factory=MLPSpec)
    conv: ConvSpec = field(default_factory=ConvSpec)
    # Decoder likelihood p(x|z): bernoulli (MNIST family) or gaussian (a learned per-channel
    # scale, or a fixed one: gaussian_sigma).
    likelihood: str = _key("bernoulli", _one_of("bernoulli", "gaussian"))
    gaussian_sigma: float | None = _key(
        None,
        Rule(lambda v: v is None or (is_number(v) and v > 0), "a number > 0, or null to learn it"),
    )
    # How the objective is reduced over one image:
    #   sum  - log-likelihood summed over pixels, KL summed over latent dims: the true
    #          per-image ELBO when beta=1 (numbers comparable with papers, in nats).
    #   mean - reconstruction averaged over pixels, KL averaged over latent dims (most
    #          tutorials and seed 002's beta values); beta is then `beta_norm` directly.
    # Both are averaged over the batch. The logged val/elbo is always the true ELBO.
    reduction: str = _key(
        "sum",
        _one_of(
            "sum",
            "mean",
            text="one of sum (true per-image ELBO), mean (per-pixel / per-latent means)",
        ),
    )


@dataclass
class AESpec(LatentSpec):
    """Deterministic autoencoder (seed 001): seed 001's MLP 784-128-64-36-18-9 and back."""

    _target_: str = "genlab.models.AE"
    name: str = "ae"
    latent_dim: int = _key(9, LATENT_DIM)  # seed 001's bottleneck
    mlp: MLPSpec = field(default_factory=lambda: MLPSpec(hidden=[128, 64, 36, 18]))


@dataclass
class VAESpec(LatentSpec):
    """Variational autoencoder with a beta-weighted KL."""

    _target_: str = "genlab.models.VAE"
    name: str = "vae"
    # Weight of the KL term (beta-VAE, Higgins et al. 2017); 1 = the true ELBO.
    beta: float = _key(
        1.0,
        Rule(
            NON_NEGATIVE.ok,
            "a number >= 0",
            "e.g. model.beta=1 (the true ELBO) or model.beta=0.025.",
        ),
    )
    # Importance samples per image of the IWAE bound (Burda et al. 2016), logged as */nll and
    # */bpd; 0 turns it off. Validation: cheap tracking; test: conf/eval/ sets it.
    iwae_k_val: int = _key(5, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0"))
    iwae_k_test: int = _key(1000, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0"))
    # Samples per image of the training objective: 1 = the ELBO; K > 1 = the IWAE bound (Burda
    # et al. 2016), logged as */iwae_bound; needs beta=1 and reduction=sum (genlab.config).
    iwae_k_train: int = _key(1, POSITIVE_INT)


@dataclass
class CVAESpec(VAESpec):
    """Conditional VAE: the label enters q(z|x, y), p(x|z, y) at every layer and p(z|y)."""

    _target_: str = "genlab.models.CVAE"
    name: str = "cvae"
    # Conv backbone and k = 8 for every dataset (a smaller z leaves more of the image to the
    # label), label dropout 0.1 and guided decoding w = 1: after 10 epochs on Fashion-MNIST,
    # label-chosen samples are of the requested class 92% of the time (82.5% unguided, 79% for
    # the MLP with k = 16 and no guidance) and the domain FID halves (docs/experiments.md).
    latent_dim: int = _key(8, LATENT_DIM)
    arch: str = _key("conv", _one_of("mlp", "conv"))
    label_encoding: str = _key("onehot", _one_of("onehot", "embedding"))  # how labels enter
    label_embed_dim: int = _key(16, POSITIVE_INT)  # size of the label embedding (embedding)
    # Share of training images whose label is replaced by "no label" (the null class), so the
    # model also learns p(x|z) and p(z) without y: what guidance compares against.
    label_dropout: float = _key(0.1, UNIT_INTERVAL_OPEN_RIGHT)
    # Guided decoding of label-chosen samples, w: decoder logits (1 + w) * l(z, y) - w * l(z, null)
    # (for a Bernoulli decoder, p(x|z,y)^(1+w) / p(x|z)^w renormalised); needs label_dropout > 0.
    # 0: plain samples of p(x|z, y).
    guidance_scale: float = _key(1.0, GUIDANCE)


@dataclass
class DDPMSpec(ModelSpec):
    """Denoising diffusion (Ho et al. 2020) with a small U-Net that trains on 28x28 on a CPU."""

    _target_: str = "genlab.models.DDPM"
    name: str = "ddpm"
    timesteps: int = _key(
        1000, Rule(POSITIVE_INT.ok, "an integer >= 1 (T)", "e.g. model.timesteps=1000.")
    )
    # Beta schedule: linear (1e-4 -> 0.02, Ho et al.) | cosine (Nichol & Dhariwal).
    schedule: str = _key("linear", _one_of("linear", "cosine"))
    # What the network predicts: eps (Ho et al.) | x0 | v (Salimans & Ho).
    prediction: str = _key("eps", _one_of("eps", "x0", "v"))
    # Reverse-process variance sigma_t^2: beta | beta_tilde (the posterior's).
    variance: str = _key("beta", _one_of("beta", "beta_tilde"))
    clip_x0: bool = _key(True, BOOL)  # clip the predicted x0 to [-1, 1] while sampling
    # Sampler steps: timesteps -> ancestral sampling (Algorithm 2, T network calls); fewer ->
    # DDIM with that many steps (Song et al. 2021); null = timesteps. Range: genlab.config.
    sample_steps: int | None = 100
    eta: float = _key(0.0, UNIT_INTERVAL)  # DDIM stochasticity: 0 deterministic, 1 DDPM-like
    unet: UNetSpec = field(default_factory=UNetSpec)
    # Class-conditional: a label embedding added to the time embedding.
    conditional: bool = _key(False, BOOL)
    # Share of training labels replaced by "null" (for classifier-free guidance).
    cond_drop_prob: float = _key(0.1, UNIT_INTERVAL_OPEN_RIGHT)
    guidance_scale: float = _key(0.0, GUIDANCE)  # guidance weight w (needs conditional)
    # EMA of the weights, used for validation, test, sampling and the checkpoint. With a
    # warm-up: update n moves the average by max(1 - ema_decay, (1 + n)^-ema_power), so a
    # short run averages its recent weights, not its initial ones (diffusers' EMAModel, Karras
    # et al. 2022). null: no EMA.
    ema_decay: float | None = _key(
        0.9999,
        Rule(
            lambda v: v is None or (is_number(v) and 0 < v < 1),
            "a number in (0, 1), or null for no EMA",
        ),
    )
    ema_power: float = _key(
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
    warmup_steps: int = _key(
        500, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: no warm-up)")
    )
    # Test images scored with the full variational bound (T network calls each; null: all).
    test_bpd_images: int | None = _key(
        256, Rule(lambda v: v is None or (is_int(v) and v >= 0), "an integer >= 0, or null: all")
    )
    bpd_t_chunk: int = _key(10, POSITIVE_INT)  # timesteps per network call in the bound
    preview_steps: int = _key(50, POSITIVE_INT)  # DDIM steps of the grids logged after validation
    # How often to log those grids (0: never).
    preview_every_n_epochs: int = _key(1, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0"))
    optimizer: dict[str, Any] = _key({**DEFAULT_OPTIMIZER, "lr": 2e-4})  # paper: Adam 2e-4


@dataclass
class VQVAESpec(ModelSpec):
    """VQ-VAE (van den Oord et al. 2017): conv encoder to a grid of code vectors (7x7 for 28x28),
    each snapped to its nearest codebook entry; not generative on its own (no prior)."""

    _target_: str = "genlab.models.VQVAE"
    name: str = "vqvae"
    # Stride-2 conv stages of the encoder (the decoder mirrors them): 28 -> 14 -> 7.
    channels: list[int] = _key([32, 64], ConvSpec.__dataclass_fields__["channels"].metadata["rule"])
    res_blocks: int = _key(1, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0"))  # paper: 2
    num_codes: int = _key(512, POSITIVE_INT)  # codebook size K (paper: 512)
    code_dim: int = _key(64, POSITIVE_INT)  # dimension D of each code vector (paper: 64)
    beta_commit: float = _key(0.25, NON_NEGATIVE)  # commitment weight (paper: 0.25)
    # How the codebook learns: ema (moving averages of the encoder outputs each code is chosen
    # for, decay codebook_decay, Laplace-smoothed counts) | loss (||sg(z_e) - e||^2 by gradient).
    codebook_update: str = _key("ema", _one_of("ema", "loss"))
    codebook_decay: float = _key(
        0.99, Rule(lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)")
    )
    codebook_eps: float = _key(1e-5, Rule(lambda v: is_number(v) and v > 0, "a number > 0"))
    # A code chosen by no encoder output for this many training steps is re-initialised from a
    # random encoder output of the batch (0: never).
    dead_code_steps: int = _key(100, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0"))
    # Decoder likelihood p(x|z_q) and its sigma: the latent models' fields (LatentSpec).
    likelihood: str = LatentSpec.__dataclass_fields__["likelihood"]
    gaussian_sigma: float | None = LatentSpec.__dataclass_fields__["gaussian_sigma"]


@dataclass
class LatentDDPMSpec(DDPMSpec):
    """A DDPM over the latent codes of a trained ae, vae or vqvae run, its samples decoded
    through that run (latent diffusion, Rombach et al. 2022): genlab.models.latent_ddpm."""

    _target_: str = "genlab.models.LatentDDPM"
    name: str = "latent_ddpm"
    # The trained autoencoder: its run dir (the best checkpoint) or a .ckpt. Required; loaded
    # frozen and read-only, never saved with this model's weights.
    autoencoder: str | None = _key(
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
    clip_x0: bool = _key(False, BOOL)  # normalised latents are not bounded by [-1, 1]
    # v-prediction (Salimans & Ho 2022) rather than the pixel DDPM's eps: without the [-1, 1]
    # clip an eps-model's small error near t = T is divided by sqrt(alpha_bar_T) ~ 0.006 in
    # its x0 prediction, and the VQ-VAE's code grids diverged (sampled latents 45x the data's
    # scale, domain FID 331 after 10 epochs); v keeps x0 = sqrt(ab) x_t - sqrt(1 - ab) v
    # bounded (FID 76 after 3 epochs; docs/experiments.md).
    prediction: str = _key("v", DDPMSpec.__dataclass_fields__["prediction"].metadata["rule"])
    # A 5x larger step than the paper's 2e-4 (the CPU DDPM preset's): the small denoisers of
    # a 10-epoch run were still far from converged at 2e-4.
    optimizer: dict[str, Any] = _key({**DEFAULT_OPTIMIZER, "lr": 1e-3})
    snap_to_codes: bool = _key(True, BOOL)  # VQ-VAE: sampled vectors -> nearest codes, decoded
    # Denoiser of flat latents (AE, VAE): an MLP of these widths, t added at every layer.
    mlp: MLPSpec = field(default_factory=lambda: MLPSpec(hidden=[256, 256, 256]))
    # Denoiser of code grids (VQ-VAE: 7x7 for 28x28): one level, no halving of the grid.
    unet: UNetSpec = field(default_factory=lambda: UNetSpec(64, [1], 2))
    test_bpd_images: int | None = _key(0, Rule(lambda v: v == 0, "0 (it is a bound on pixels)"))


MODEL_SPECS: dict[str, type[ModelSpec]] = {
    spec.name: spec for spec in (AESpec, VAESpec, CVAESpec, DDPMSpec, VQVAESpec, LatentDDPMSpec)
}


# -- building and checking -----------------------------------------------------------------------
# Keys whose value is a nested spec, and that spec.
NESTED = {"mlp": MLPSpec, "conv": ConvSpec, "unet": UNetSpec}


def user_keys(spec_cls: type) -> list[str]:
    """The keys a user sets, in field order (all but Hydra's `_target_`)."""
    return [f.name for f in dataclasses.fields(spec_cls) if f.name != "_target_"]


def unknown_keys(spec_cls: type, fields: Mapping[str, Any]) -> list[str]:
    """The keys of `fields` that `spec_cls` does not have, sorted."""
    return sorted(set(fields) - {f.name for f in dataclasses.fields(spec_cls)})


def build_spec(spec_cls: type, fields: Mapping[str, Any], *, strict: bool = True):
    """The spec of `fields` (plain values, e.g. a resolved config node or a checkpoint's
    hyperparameters), nested nodes made into their specs. strict: an unknown key is an error
    naming it; otherwise (an older checkpoint's removed keys) it is left out."""
    unknown = unknown_keys(spec_cls, fields)
    if unknown and strict:
        raise GenlabError(
            f"{spec_cls.__name__} has no key {', '.join(map(repr, unknown))}; "
            f"its keys are: {', '.join(sorted(user_keys(spec_cls)))}."
        )
    values = {k: v for k, v in fields.items() if k not in unknown}
    if strict:
        for key, value, rule in violations(spec_cls, values, "model"):
            raise GenlabError(
                f"Invalid model spec: {key}={value!r}. {key} must be {rule.accepted}."
            )
    for name, value in values.items():
        if name in NESTED and isinstance(value, Mapping):
            values[name] = NESTED[name](**value)
    return spec_cls(**values)


def schema_node(spec_cls: type) -> dict[str, Any]:
    """The defaults of a spec as a plain config node (what Hydra composes `model=` from).
    Untyped on purpose: a wrong value reaches genlab.config.validate and gets its one-line
    message there instead of an OmegaConf type error from deep inside composition."""
    return dataclasses.asdict(spec_cls())


def violations(spec_cls: type, node: Mapping[str, Any], prefix: str):
    """(key, value, rule) for each value of `node` its spec's rules refuse, in field order."""
    for f in dataclasses.fields(spec_cls):
        if f.name not in node:
            continue
        value = node[f.name]
        key = f"{prefix}.{f.name}"
        if f.name in NESTED and isinstance(value, Mapping):
            yield from violations(NESTED[f.name], value, key)
            continue
        if f.name == "optimizer" and isinstance(value, Mapping):
            for name, rule in OPTIMIZER_RULES.items():
                if name in value and not rule.ok(value[name]):
                    yield f"{key}.{name}", value[name], rule
            continue
        rule = f.metadata.get("rule")
        if rule is not None and not rule.ok(value):
            yield key, value, rule


def store_schemas() -> None:
    """Put every model's spec into Hydra's ConfigStore as `_<name>_spec_` (a root config, so
    no group lists it as a choice). Called by the hydra_plugins package, which Hydra imports
    whenever it starts, so every composition (train.py, the CLI's precheck, tests) sees them."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, spec_cls in MODEL_SPECS.items():
        store.store(name=f"_{name}_spec_", node=schema_node(spec_cls))

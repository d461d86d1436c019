"""What every model spec is: the base `ModelSpec` (keys every model has, and the hooks through
which genlab asks a model about itself instead of testing its name), the keys the latent models
share (`LatentSpec`), the network specs, and building / checking a spec from plain values.

Each model's own spec lives in its own folder, `genlab/models/<name>/spec.py` (or a user's
module: docs/extending.md), and is the only place of that model's defaults, comments and value
rules (nanoGPT's GPTConfig is the example):
- Hydra composes `model=<name>` from the spec: `schema_node` turns it into the base node every
  conf/model/<name>.yaml extends (`- /_<name>_spec_@_here_`, stored by genlab.models.catalog),
  and those files only wire keys to other config groups (the data's image shape, eval sizes).
- `genlab.run_rules.validate_run_config` checks each key against the field's rule, then the
  spec's own cross-field rules (`check`), so a bad value fails before anything is built.
- The LightningModule is built from the spec (`VAE(**fields)` makes a VAESpec first), the
  checkpoint stores it as its hyperparameters, and loading rebuilds the model from it.

Torch-free: the CLI composes and checks configs without importing torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from genlab import GenlabError

# The value rules (genlab.spec_rules), re-exported: callers import them from here too.
from genlab.spec_rules import (  # noqa: F401 (re-exported)
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
    one_of,
    spec_key,
)


# -- networks ------------------------------------------------------------------------------------
@dataclass
class MLPSpec:
    # Hidden widths of the MLP encoder; the decoder mirrors them.
    hidden: list[int] = spec_key([512, 256], Rule(is_int_list, "a list of positive integers"))


@dataclass
class ConvSpec:
    # Channels of the stride-2 conv stages; the decoder mirrors them.
    channels: list[int] = spec_key(
        [32, 64, 128],
        Rule(lambda v: is_int_list(v, nonempty=True), "a non-empty list of positive integers"),
    )
    fc_dim: int = spec_key(256, POSITIVE_INT)  # width of the dense layer between features and z


@dataclass
class UNetSpec:
    """Ho et al.'s U-Net, sized for 28x28 data on a CPU (the paper's CIFAR-10 network is
    `UNET_DDPM_CIFAR10`, and conf/experiment/ddpm_cifar10.yaml)."""

    base_channels: int = spec_key(32, POSITIVE_INT)  # channels at full resolution (paper: 128)
    # One multiplier per resolution level (paper CIFAR-10: [1, 2, 2, 2]); the image size must
    # be divisible by 2^(levels - 1).
    channel_mults: list[int] = spec_key(
        [1, 2, 2],
        Rule(lambda v: is_int_list(v, nonempty=True), "a non-empty list of positive integers"),
    )
    num_res_blocks: int = spec_key(1, POSITIVE_INT)  # residual blocks per level (paper: 2)
    # Feature-map sizes with self-attention (paper: [16]); the middle block always has one.
    attn_resolutions: list[int] = spec_key([])
    dropout: float = spec_key(0.1, UNIT_INTERVAL_OPEN_RIGHT)  # in residual blocks (paper: 0.1)


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
    image_shape: list[int] = spec_key(
        [1, 28, 28],
        Rule(
            lambda v: is_int_list(v) and len(list(v)) == 3,
            "a list [channels, height, width] of positive integers",
        ),
    )
    num_classes: int = spec_key(10, POSITIVE_INT)  # label count, used by conditional models
    optimizer: dict[str, Any] = spec_key(DEFAULT_OPTIMIZER)

    def hparams(self) -> dict[str, Any]:
        """The spec as plain data: what a checkpoint stores as its hyperparameters."""
        data = dataclasses.asdict(self)
        data.pop("_target_")
        return data

    # -- what genlab asks of a model, so no code outside its folder tests its name ---------------
    # Its codes can be the data of model=latent_ddpm (a flat code or a grid of code vectors).
    is_autoencoder: ClassVar[bool] = False
    # It is built on a trained autoencoder run, whose weights an export carries beside its own.
    has_autoencoder: ClassVar[bool] = False
    # Metrics only its test stage logs, beside the module's `metric_names` (a sweep's
    # optimize_metric may name them).
    test_metric_names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check(cls, cfg: Any, model: Mapping[str, Any]) -> None:
        """The rules that span several keys of the run config `cfg` (its resolved `model`
        node given too), after every key passed its own rule: raise GenlabError naming them."""

    @classmethod
    def uses_labels(cls, model: Mapping[str, Any]) -> bool:
        """Whether the model this config node describes trains on class labels."""
        return False

    @classmethod
    def parameters_lower_bound(cls, model: Mapping[str, Any], shape: list[int]) -> tuple[int, str]:
        """(a lower bound on the parameter count of the model `model` describes for images of
        `shape`, the key that makes most of it), never above the real count, so a model that
        fits memory is never refused (genlab.resources). 0: nothing known before it is built."""
        return 0, "model"


@dataclass
class LatentSpec(ModelSpec):
    """Keys the latent-variable models (AE, VAE, CVAE) share."""

    latent_dim: int = spec_key(16, LATENT_DIM)  # size of the latent code z (k)
    arch: str = spec_key("mlp", one_of("mlp", "conv"))  # encoder/decoder backbone
    mlp: MLPSpec = field(default_factory=MLPSpec)
    conv: ConvSpec = field(default_factory=ConvSpec)
    # Decoder likelihood p(x|z): bernoulli (MNIST family) or gaussian (a learned per-channel
    # scale, or a fixed one: gaussian_sigma).
    likelihood: str = spec_key("bernoulli", one_of("bernoulli", "gaussian"))
    gaussian_sigma: float | None = spec_key(
        None,
        Rule(lambda v: v is None or (is_number(v) and v > 0), "a number > 0, or null to learn it"),
    )
    # How the objective is reduced over one image:
    #   sum  - log-likelihood summed over pixels, KL summed over latent dims: the true
    #          per-image ELBO when beta=1 (numbers comparable with papers, in nats).
    #   mean - reconstruction averaged over pixels, KL averaged over latent dims (most
    #          tutorials use, with their beta values); beta is then `beta_norm` directly.
    # Both are averaged over the batch. The logged val/elbo is always the true ELBO.
    reduction: str = spec_key(
        "sum",
        one_of(
            "sum",
            "mean",
            text="one of sum (true per-image ELBO), mean (per-pixel / per-latent means)",
        ),
    )

    @classmethod
    def parameters_lower_bound(cls, model: Mapping[str, Any], shape: list[int]) -> tuple[int, str]:
        # The input and latent layers every backbone of genlab.nets has.
        pixels = shape[0] * shape[1] * shape[2] if len(shape) == 3 else 0
        k = int(model.get("latent_dim") or 0)
        if model.get("arch") == "conv":
            conv = model.get("conv") or {}
            channels = ints(conv.get("channels"))
            fc = int(conv.get("fc_dim") or 0)
            side = shape[1] // 2 ** len(channels) if len(shape) == 3 and channels else 0
            features = channels[-1] * side * side if channels else 0
            terms = [(2 * features * fc, "model.conv.fc_dim"), (2 * fc * k, "model.latent_dim")]
        else:
            hidden = ints((model.get("mlp") or {}).get("hidden"))
            first, last = (hidden[0], hidden[-1]) if hidden else (pixels, pixels)
            inner = sum(a * b for a, b in zip(hidden, hidden[1:], strict=False))
            terms = [
                (2 * pixels * first, "model.mlp.hidden"),
                (2 * inner, "model.mlp.hidden"),
                (2 * last * k, "model.latent_dim"),
            ]
        return largest(terms)


# -- building and checking -----------------------------------------------------------------------
def ints(v: Any) -> list[int]:
    """A config value as a list of ints; [] when it is not one (the value rules say so)."""
    try:
        return [int(i) for i in v]
    except (TypeError, ValueError):
        return []


def largest(terms: list[tuple[int, str]]) -> tuple[int, str]:
    """(the sum of (count, key) terms, the key of the largest) for parameters_lower_bound."""
    return sum(n for n, _ in terms), max(terms)[1] if terms else "model"


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
    Untyped on purpose: a wrong value reaches genlab.run_rules.validate_run_config and gets its
    one-line message there instead of an OmegaConf type error from deep inside composition."""
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

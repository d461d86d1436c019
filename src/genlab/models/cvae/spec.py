"""model=cvae's spec: keys, defaults, their meaning and rules, and its cross-field rule
(guidance needs label dropout). Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genlab import GenlabError
from genlab.models.vae.spec import VAESpec
from genlab.specs import (
    GUIDANCE,
    LATENT_DIM,
    POSITIVE_INT,
    UNIT_INTERVAL_OPEN_RIGHT,
    one_of,
    spec_key,
)


@dataclass
class CVAESpec(VAESpec):
    """Conditional VAE: the label enters q(z|x, y), p(x|z, y) at every layer and p(z|y)."""

    _target_: str = "genlab.models.CVAE"
    name: str = "cvae"
    # Conv backbone and k = 8 for every dataset (a smaller z leaves more of the image to the
    # label), label dropout 0.1 and guided decoding w = 1: together they make label-chosen
    # samples follow the label far more often (docs/experiments.md has the figures).
    latent_dim: int = spec_key(8, LATENT_DIM)
    arch: str = spec_key("conv", one_of("mlp", "conv"))
    label_encoding: str = spec_key("onehot", one_of("onehot", "embedding"))  # how labels enter
    label_embed_dim: int = spec_key(16, POSITIVE_INT)  # size of the label embedding (embedding)
    # Share of training images whose label is replaced by "no label" (the null class), so the
    # model also learns p(x|z) and p(z) without y: what guidance compares against.
    label_dropout: float = spec_key(0.1, UNIT_INTERVAL_OPEN_RIGHT)
    # Guided decoding of label-chosen samples, w: decoder logits (1 + w) * l(z, y) - w * l(z, null)
    # (for a Bernoulli decoder, p(x|z,y)^(1+w) / p(x|z)^w renormalised); needs label_dropout > 0.
    # 0: plain samples of p(x|z, y).
    guidance_scale: float = spec_key(1.0, GUIDANCE)

    is_autoencoder = False  # its code needs the label: no latent DDPM is trained on it

    @classmethod
    def check(cls, cfg: Any, model: Mapping[str, Any]) -> None:
        super().check(cfg, model)
        if model.get("guidance_scale") and not model.get("label_dropout"):
            raise GenlabError(
                f"Invalid config: model.guidance_scale={model['guidance_scale']} compares the "
                "CVAE's decoder with and without the label, but with model.label_dropout=0 it "
                "never learns without one: keep model.label_dropout=0.1 (the default), or set "
                "model.guidance_scale=0 for plain samples."
            )

    @classmethod
    def uses_labels(cls, model: Mapping[str, Any]) -> bool:
        return True


GENLAB_MODELS = (CVAESpec,)

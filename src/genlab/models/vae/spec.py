"""model=vae's spec: keys, defaults, their meaning and rules, and its cross-field rule (the
IWAE training bound needs beta=1 and reduction=sum). Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genlab import GenlabError
from genlab.specs import NON_NEGATIVE, POSITIVE_INT, LatentSpec, Rule, is_int, spec_key


@dataclass
class VAESpec(LatentSpec):
    """Variational autoencoder with a beta-weighted KL."""

    _target_: str = "genlab.models.VAE"
    name: str = "vae"
    # Weight of the KL term (beta-VAE, Higgins et al. 2017); 1 = the true ELBO.
    beta: float = spec_key(
        1.0,
        Rule(
            NON_NEGATIVE.ok,
            "a number >= 0",
            "e.g. model.beta=1 (the true ELBO) or model.beta=0.025.",
        ),
    )
    # Importance samples per image of the IWAE bound (Burda et al. 2016), logged as */nll and
    # */bpd; 0 turns it off. Validation: cheap tracking; test: conf/eval/ sets it.
    iwae_k_val: int = spec_key(5, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0"))
    iwae_k_test: int = spec_key(1000, Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0"))
    # Samples per image of the training objective: 1 = the ELBO; K > 1 = the IWAE bound (Burda
    # et al. 2016), logged as */iwae_bound; needs beta=1 and reduction=sum (check, below).
    iwae_k_train: int = spec_key(1, POSITIVE_INT)

    is_autoencoder = True

    @classmethod
    def check(cls, cfg: Any, model: Mapping[str, Any]) -> None:
        if model.get("iwae_k_train", 1) > 1 and (model["beta"] != 1 or model["reduction"] != "sum"):
            raise GenlabError(
                f"Invalid config: model.iwae_k_train={model['iwae_k_train']} trains on the IWAE "
                "bound, which has no KL term to weight or per-pixel mean: it needs model.beta=1 "
                f"and model.reduction=sum (got beta={model['beta']}, "
                f"reduction={model['reduction']}). Set both, or model.iwae_k_train=1 for the "
                "(beta-)ELBO."
            )


GENLAB_MODELS = (VAESpec,)

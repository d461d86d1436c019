"""beta-TCVAE (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs"): a model genlab
does not ship, written the way any user's model is (docs/extending.md).

This file is the model's torch-free half: its spec (keys, defaults, value rules, cross-field
rules) and `GENLAB_MODELS`, the list genlab registers when the module is named (here by
examples/conf/model/betatcvae.yaml, or plugins=[betatcvae] on the command line):

    PYTHONPATH=examples python train.py --config-dir examples/conf model=betatcvae model.beta=6

The LightningModule is in `betatcvae.model` (`_target_`), imported only when the model is built,
so `--cfg job` and a bad value answer without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genlab import GenlabError
from genlab.models.vae.spec import VAESpec
from genlab.specs import NON_NEGATIVE, Rule, is_int, spec_key


@dataclass
class BetaTCVAESpec(VAESpec):
    """The VAE's keys, with its KL split into three weighted parts (Chen et al. 2018, eq. 2):
    index-code mutual information I(x; z), total correlation TC(z) = KL(q(z) || prod_d q(z_d))
    and the dimension-wise KL sum_d KL(q(z_d) || p(z_d))."""

    _target_: str = "betatcvae.model.BetaTCVAE"
    name: str = "betatcvae"
    # Weight of the total correlation (the paper's beta; 1 with alpha = gamma = 1 is the ELBO).
    beta: float = spec_key(6.0, Rule(NON_NEGATIVE.ok, "a number >= 0", "e.g. model.beta=6."))
    alpha: float = spec_key(1.0, NON_NEGATIVE)  # weight of the index-code mutual information
    gamma: float = spec_key(1.0, NON_NEGATIVE)  # weight of the dimension-wise KL
    # N of minibatch-weighted sampling, log q(z) ~ logsumexp_j log q(z|x_j) - log(N * batch):
    # null = the size of the training split, counted when training starts.
    dataset_size: int | None = spec_key(
        None, Rule(lambda v: v is None or (is_int(v) and v >= 1), "an integer >= 1, or null")
    )

    @classmethod
    def check(cls, cfg: Any, model: Mapping[str, Any]) -> None:
        # The decomposition is of the per-image KL summed over latent dimensions, one sample.
        if model.get("reduction") != "sum" or model.get("iwae_k_train") != 1:
            raise GenlabError(
                "Invalid config: model=betatcvae decomposes the per-image KL of one sample: it "
                f"needs model.reduction=sum and model.iwae_k_train=1 (got "
                f"{model.get('reduction')}, {model.get('iwae_k_train')})."
            )


GENLAB_MODELS = (BetaTCVAESpec,)

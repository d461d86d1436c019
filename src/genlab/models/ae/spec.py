"""model=ae's spec: keys, defaults, their meaning and rules (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field

from genlab.specs import LATENT_DIM, LatentSpec, MLPSpec, spec_key


@dataclass
class AESpec(LatentSpec):
    """Deterministic autoencoder: the classic MLP 784-128-64-36-18-9 and back."""

    _target_: str = "genlab.models.AE"
    name: str = "ae"
    latent_dim: int = spec_key(9, LATENT_DIM)  # the classic MLP autoencoder's bottleneck
    mlp: MLPSpec = field(default_factory=lambda: MLPSpec(hidden=[128, 64, 36, 18]))
    is_autoencoder = True


GENLAB_MODELS = (AESpec,)

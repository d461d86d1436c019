"""The models and the one registry of them: config name (`model.name`, a checkpoint's
`hyper_parameters["name"]`) -> LightningModule class."""

from genlab import GenlabError
from genlab.models.ae import AE
from genlab.models.base import Capabilities, GenerativeModule
from genlab.models.cvae import CVAE
from genlab.models.ddpm import DDPM
from genlab.models.latent_ddpm import LatentDDPM
from genlab.models.vae import VAE
from genlab.models.vqvae import VQVAE

MODEL_CLASSES: dict[str, type[GenerativeModule]] = {
    cls.kind: cls for cls in (AE, VAE, CVAE, DDPM, VQVAE, LatentDDPM)
}


def model_class(name: str) -> type[GenerativeModule]:
    """The class of the model called `name`; a GenlabError naming the choices otherwise."""
    try:
        return MODEL_CLASSES[name]
    except KeyError:
        raise GenlabError(
            f"unknown model {name!r}: genlab has {', '.join(MODEL_CLASSES)}"
        ) from None


__all__ = [
    "AE",
    "VAE",
    "CVAE",
    "DDPM",
    "VQVAE",
    "LatentDDPM",
    "Capabilities",
    "GenerativeModule",
    "MODEL_CLASSES",
    "model_class",
]

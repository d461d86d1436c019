from genlab.models.ae import AE
from genlab.models.cvae import CVAE
from genlab.models.ddpm import DDPM
from genlab.models.vae import VAE

__all__ = ["AE", "VAE", "CVAE", "DDPM"]

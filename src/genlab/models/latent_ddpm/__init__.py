"""model=latent_ddpm: `spec` (torch-free: keys, defaults, rules) and `model` (the
LightningModule)."""

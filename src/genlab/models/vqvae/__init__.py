"""model=vqvae: `spec` (torch-free: keys, defaults, rules) and `model` (the LightningModule)."""

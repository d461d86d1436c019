"""genlab's models, one folder each (`genlab/models/<name>/`: a torch-free `spec` and the
LightningModule in `model`), and the registry derived from genlab.models.catalog's one list:
`MODEL_CLASSES` (config name -> class) and `model_class(name)`.

Importing this package is torch-free: the classes (`genlab.models.VAE`, the `_target_` of
conf/model/vae.yaml) and MODEL_CLASSES are imported on first use.
"""

from __future__ import annotations

import importlib


def model_class(name: str) -> type:
    """The class of the model called `name`; a GenlabError naming the choices otherwise."""
    from genlab.models.catalog import model_class as catalog_class

    return catalog_class(name)


def __getattr__(attr: str):
    if attr == "MODEL_CLASSES":  # every model known now (plugins may join later)
        from genlab.models.catalog import MODEL_SPECS

        return {name: model_class(name) for name in MODEL_SPECS}
    if attr in ("Capabilities", "GenerativeModule"):
        return getattr(importlib.import_module("genlab.models.base"), attr)
    from genlab.models.catalog import MODEL_SPECS

    # A built-in model's class, by the name its spec's _target_ gives it here.
    for spec_cls in MODEL_SPECS.values():
        if spec_cls._target_ == f"{__name__}.{attr}":
            package = spec_cls.__module__.rpartition(".")[0]
            return getattr(importlib.import_module(f"{package}.model"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


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

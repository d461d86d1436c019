"""genlab: train, sweep and sample latent-variable generative models with Lightning + Hydra.

Importing the package is cheap (no torch): `python train.py --cfg job` only needs the config path.

The Python API (docs/python-api.md): `genlab.load(path)` -> a Pipeline (sample, encode, decode,
reconstruct; `.data`), `genlab.train(overrides)` -> (metrics, run_dir). Both import lazily.
"""

__version__ = "0.1.0"


class GenlabError(Exception):
    """A problem the user can fix (bad config, missing data, wrong checkpoint).

    Entry points print its message as one paragraph, without a traceback, and exit with code 2.
    """


def load(path, device="cpu"):
    """The trained model of a run dir, a .ckpt or an export folder: genlab.api.load."""
    from genlab.api import load as load_pipeline

    return load_pipeline(path, device)


def train(overrides=()):
    """Run what `python train.py <overrides>` runs: genlab.api.train. (`python -m genlab.train`
    is the command; the module cannot be imported, so this name stays the function.)"""
    from genlab.api import train as train_run

    return train_run(overrides)

"""genlab: train, sweep and sample latent-variable generative models with Lightning + Hydra.

Importing the package is cheap (no torch): `python train.py --cfg job` only needs the config path.
"""

__version__ = "0.1.0"


class GenlabError(Exception):
    """A problem the user can fix (bad config, missing data, wrong checkpoint).

    Entry points print its message as one paragraph, without a traceback, and exit with code 2.
    """

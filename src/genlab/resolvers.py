"""OmegaConf resolvers used by genlab's configs. Registered before Hydra composes anything."""

import os

from omegaconf import OmegaConf


def register() -> None:
    # The process id keeps two runs started in the same microsecond in different dirs.
    if not OmegaConf.has_resolver("genlab_pid"):
        OmegaConf.register_new_resolver("genlab_pid", lambda: os.getpid(), use_cache=True)


register()

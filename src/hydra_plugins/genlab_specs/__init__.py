"""Registers the models genlab knows (genlab.models.catalog) in Hydra's ConfigStore.

Hydra imports every module of the `hydra_plugins` namespace package when it starts, before it
composes anything, so conf/model/<name>.yaml can extend `_<name>_spec_` in any process that
composes genlab's configs: train.py, the CLI's precheck, sweep jobs, tests.
"""

import genlab.models.catalog  # noqa: F401 (registering the models stores their nodes)

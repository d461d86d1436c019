"""genlab's Hydra launcher plugins (the code is in genlab.sweep.launchers).

Hydra instantiates launchers only from the `hydra_plugins` namespace package, so the classes
that conf/hydra/launcher/*.yaml name are declared here.
"""

from genlab.sweep.launchers import LocalParallelLauncher as _LocalParallelLauncher
from genlab.sweep.launchers import SlurmLauncher as _SlurmLauncher


class GenlabSlurmLauncher(_SlurmLauncher):
    """hydra-submitit-launcher's Slurm launcher that survives cancelled jobs (see genlab.sweep)."""


class GenlabLocalParallelLauncher(_LocalParallelLauncher):
    """n_jobs jobs at once on this machine, each a process tree of its own (genlab.sweep)."""

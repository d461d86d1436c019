"""genlab's Hydra launcher and sweeper plugins (the code is in genlab.sweep.launchers and
genlab.sweep.optuna).

Hydra instantiates launchers and sweepers only from the `hydra_plugins` namespace package, so the
classes that conf/hydra/launcher/*.yaml and conf/hydra/sweeper/*.yaml name are declared here.
"""

from genlab.sweep.launchers import LocalParallelLauncher as _LocalParallelLauncher
from genlab.sweep.launchers import SlurmLauncher as _SlurmLauncher
from genlab.sweep.optuna import OptunaSearch as _OptunaSearch


class GenlabSlurmLauncher(_SlurmLauncher):
    """hydra-submitit-launcher's Slurm launcher that survives cancelled jobs (see genlab.sweep)."""


class GenlabLocalParallelLauncher(_LocalParallelLauncher):
    """n_jobs jobs at once on this machine, each a process tree of its own (genlab.sweep)."""


class GenlabOptunaSweeper(_OptunaSearch):
    """hydra-optuna-sweeper's Optuna sweeper that records failed trials as failed and goes on."""

"""genlab's Hydra launcher and sweeper plugins (the code is in genlab.sweep.launchers and
genlab.sweep.optuna).

Hydra instantiates launchers and sweepers only from the `hydra_plugins` namespace package, so the
classes that conf/hydra/launcher/*.yaml and conf/hydra/sweeper/*.yaml name are declared here.
Hydra imports this module whenever it starts, a single run's too: each class builds genlab's
own (`impl`) only when Hydra instantiates it for a sweep, so a single run imports nothing of
genlab.sweep.
"""

from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper


class GenlabSlurmLauncher(Launcher):
    """hydra-submitit-launcher's Slurm launcher that survives cancelled jobs (see genlab.sweep)."""

    def __init__(self, **params) -> None:
        from genlab.sweep.launchers import SlurmLauncher

        self.impl = SlurmLauncher(**params)

    def setup(self, **kwargs) -> None:
        self.impl.setup(**kwargs)

    def launch(self, job_overrides, initial_job_idx):
        return self.impl.launch(job_overrides, initial_job_idx)


class GenlabLocalParallelLauncher(Launcher):
    """n_jobs jobs at once on this machine, each a process tree of its own (genlab.sweep)."""

    def __init__(self, **params) -> None:
        from genlab.sweep.launchers import LocalParallelLauncher

        self.impl = LocalParallelLauncher(**params)

    def setup(self, **kwargs) -> None:
        self.impl.setup(**kwargs)

    def launch(self, job_overrides, initial_job_idx):
        return self.impl.launch(job_overrides, initial_job_idx)


class GenlabOptunaSweeper(Sweeper):
    """hydra-optuna-sweeper's Optuna sweeper that records failed trials as failed and goes on."""

    def __init__(self, **settings) -> None:
        from genlab.sweep.optuna import OptunaSearch

        self.impl = OptunaSearch(**settings)

    def setup(self, **kwargs) -> None:
        self.impl.setup(**kwargs)

    def sweep(self, arguments):
        return self.impl.sweep(arguments)

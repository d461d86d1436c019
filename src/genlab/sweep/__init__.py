"""Sweeps: many training jobs from one command (`python train.py -m ...`).

- `keys`:      which config keys a sweep varies; job folder and W&B run names derived from them
- `job`:       one job of a sweep (a failure is recorded in its `status.json`, not raised;
               a DDP job runs in a process tree of its own)
- `callback`:  the Hydra callback that records the sweep when it starts and reports when it ends
- `report`:    tables, image panels, metric plots of a sweep dir (`python -m genlab.sweep.report`)
- `launchers`: the Slurm launcher (submitit) that survives cancelled jobs
- `preemption`: checkpoint, then requeue, when Slurm signals a time limit or preemption
- `precheck`:  a multirun command line checked before any job starts
- `wandb_offline`: reads offline W&B runs back (tests, debugging without a W&B server)

Importing this package is cheap (no torch) and registers the resolvers the configs use.
"""

from genlab.composition import register_resolvers

# A job's process (joblib, submitit) first imports this package when it unpickles the sweep's
# callback or launcher, and then Hydra resolves the job's folder, ${genlab_job_subdir:}.
register_resolvers()

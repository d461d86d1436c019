"""Sweeps: many training jobs from one command (`python train.py -m ...`).

Before the sweep:
- `precheck`:    a multirun command line checked before any job starts
- `keys`:        the keys a sweep varies; job folder and W&B run names derived from them
While it runs:
- `callback`:    the Hydra callback that records the sweep when it starts, reports when it ends
- `job`:         one job: its identity, what it takes from the sweep, the failure policy
                 (a failure is recorded in the job's status, not raised)
- `status`:      a job's record, `<job dir>/status.json` (written atomically)
- `own_process`: a DDP job runs in a process tree of its own
- `launchers`:   the Slurm launcher (submitit) that survives cancelled jobs
- `preemption`:  checkpoint, then requeue, when Slurm signals a time limit or preemption
After it:
- `results`:     the jobs read back from the files they wrote (`Job`, `collect_jobs`)
- `tables`:      the report's jobs.csv and report.md
- `figures`:     the report's image panels and metric plots
- `report`:      writes the report (`python -m genlab.sweep.report <sweep dir>`)

The reader of offline W&B runs that the tests use is tests/wandb_offline.py.
Importing this package is cheap (no torch) and imports none of them.
"""

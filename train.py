"""Train a genlab model: `python train.py model=vae data=fashion_mnist trainer.max_epochs=20`.

A thin Hydra wrapper: configs live in conf/, the work in genlab.train.run. Heavy imports
(torch, lightning) happen inside main, so `python train.py --cfg job` stays fast.
Exit codes: 0 done, 2 bad input or diverged (message on stderr), 130/143 interrupted by
SIGINT/SIGTERM after writing a checkpoint; for a sweep (`-m`), 1 when any job did not
complete (each job's error is in the sweep report), 2 when the sweep is refused before it starts.
"""

import sys

import hydra
from omegaconf import DictConfig

import genlab.resolvers  # noqa: F401  (registers ${genlab_pid:} before Hydra composes)
import genlab.sweep  # noqa: F401  (registers ${genlab_job_subdir:} ...; a job's process needs it)
from genlab import GenlabError
from genlab.cli import fail, precheck


def _train(cfg: DictConfig) -> dict:
    from genlab.train import run

    return run(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from genlab.secrets import redact_files
    from genlab.sweep.job import current_job, objective, run_sweep_job

    hydra_dir = cfg.paths.output_dir + "/.hydra"
    redact_files(
        [f"{hydra_dir}/{name}" for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    )
    if current_job() is not None:
        # One job of a sweep: a failure is recorded in the job's status.json and the sweep
        # goes on; the exit code is decided when the sweep ends.
        return run_sweep_job(cfg, _train, script=__file__)
    from genlab.callbacks import TrainingInterrupted

    try:
        metrics = _train(cfg)
    except GenlabError as err:
        fail(str(err))
    except TrainingInterrupted as err:
        fail(str(err), code=err.exit_code)
    return objective(metrics, cfg)


if __name__ == "__main__":
    try:
        precheck(sys.argv[1:], "train")
    except GenlabError as err:
        fail(str(err))
    from genlab.sweep.callback import finish_sweep, sweep_exit_code

    try:
        main()
    except BaseException:
        finish_sweep(interrupted=True)  # a sweep stopped early still reports its jobs
        raise
    sys.exit(sweep_exit_code())

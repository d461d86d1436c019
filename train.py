"""Train a genlab model: `python train.py model=vae data=fashion_mnist trainer.max_epochs=20`.

A thin Hydra wrapper: configs live in conf/, the work in genlab.train.run, the failure policy
(single run or sweep job) in genlab.cli.task_wrapper. Heavy imports (torch, lightning) happen
inside the task, so `python train.py --cfg job` stays fast.
Exit codes: 0 done, 2 bad input or diverged (message on stderr), 130/143 interrupted by
SIGINT/SIGTERM after writing a checkpoint; for a sweep (`-m`), 1 when any job did not
complete (each job's error is in the sweep report), 2 when the sweep is refused before it starts.
"""

import sys

import hydra
from omegaconf import DictConfig

from genlab.cli import start, task_wrapper
from genlab.composition import register_resolvers

register_resolvers()  # before Hydra composes: conf/train.yaml interpolates ${genlab_pid:} ...


def _train(cfg: DictConfig) -> dict:
    from genlab.train import run

    return run(cfg)


train = task_wrapper(_train, script=__file__)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    start(main, sys.argv[1:], "train")

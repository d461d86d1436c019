"""Train a genlab model: `python train.py model=vae data=fashion_mnist trainer.max_epochs=20`.

A thin Hydra wrapper: configs live in conf/, the work in genlab.train.run. Heavy imports
(torch, lightning) happen inside main, so `python train.py --cfg job` stays fast.
"""

import sys

import hydra
from omegaconf import DictConfig

import genlab.resolvers  # noqa: F401  (registers ${genlab_pid:} before Hydra composes)
from genlab import GenlabError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from genlab.train import run

    try:
        metrics = run(cfg)
    except GenlabError as err:
        print(f"genlab: error: {err}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()

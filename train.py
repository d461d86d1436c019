"""Train a genlab model: `python train.py model=vae data=fashion_mnist trainer.max_epochs=20`.

A thin Hydra wrapper: configs live in conf/, the work in genlab.train.run. Heavy imports
(torch, lightning) happen inside main, so `python train.py --cfg job` stays fast.
Exit codes: 0 done, 2 bad input or diverged (message on stderr), 130/143 interrupted by
SIGINT/SIGTERM after writing a checkpoint.
"""

import sys

import hydra
from omegaconf import DictConfig

import genlab.resolvers  # noqa: F401  (registers ${genlab_pid:} before Hydra composes)
from genlab import GenlabError
from genlab.cli import fail, precheck


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from genlab.callbacks import TrainingInterrupted
    from genlab.secrets import redact_files
    from genlab.train import run

    hydra_dir = cfg.paths.output_dir + "/.hydra"
    redact_files(
        [f"{hydra_dir}/{name}" for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    )
    try:
        metrics = run(cfg)
    except GenlabError as err:
        fail(str(err))
    except TrainingInterrupted as err:
        fail(str(err), code=err.exit_code)
    return metrics.get("val/loss")


if __name__ == "__main__":
    try:
        precheck(sys.argv[1:], "train")
    except GenlabError as err:
        fail(str(err))
    main()

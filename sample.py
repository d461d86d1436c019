"""Turn a trained run into pictures: `python sample.py run=outputs/runs/<date>/<run> task=samples`.

A thin Hydra wrapper: options live in conf/sample.yaml, the work in genlab.sample.run. Heavy
imports (torch) happen inside main, so `python sample.py --help` and bad input answer fast.
"""

import sys

import hydra
from omegaconf import DictConfig

from genlab import GenlabError


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    from genlab.sample import run

    try:
        written = run(cfg)
    except GenlabError as err:
        print(f"genlab: error: {err}", file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Train a genlab model: `python train.py model=vae data=fashion_mnist trainer.max_epochs=20`.

The same Hydra app as the installed `genlab-train` (genlab.commands.train): configs in conf/,
the work in genlab.training.run, the failure policy in genlab.cli.task_wrapper, the exit codes in
genlab.commands.
"""

# main (the Hydra main) is imported for the tests that load this script.
from genlab.commands import train
from genlab.commands import train_main as main  # noqa: F401

if __name__ == "__main__":
    train()

"""A callback the start-up benchmark adds to `python train.py`: it writes the wall-clock time of
the first training batch to $GENLAB_FIRST_STEP_FILE, so the benchmark can time a run from process
start to its first step (data loading, model and Trainer set-up included)."""

import os
import time

import lightning.pytorch as pl


class FirstStepClock(pl.Callback):
    def __init__(self):
        self.path = os.environ["GENLAB_FIRST_STEP_FILE"]
        self.done = False

    def on_train_batch_start(self, trainer, *args):
        if not self.done:
            self.done = True
            with open(self.path, "w") as f:
                f.write(repr(time.time()))

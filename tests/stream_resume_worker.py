"""Streams a small classifier from a source, checkpointing every few batches; the test kills it.

Usage: python tests/stream_resume_worker.py CHECKPOINT_DIR OUT.npz [--resume] [--epochs N]
[--read-sleep SECONDS]. Writes every leaf of the final ``TrainState`` to ``OUT.npz`` and
prints the final history as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from resume_worker import CountSteps, model, synthetic_data

import fnlearn
from fnlearn import optim, sources
from fnlearn.callbacks import ModelCheckpoint

BATCH_SIZE = 16
STEPS_PER_EPOCH = 448 // BATCH_SIZE
SAVE_EVERY_STEPS = 6
STEPS_PER_CALL = 4


class SlowSource(sources.ArraySource):
    """Sleeps before each batched read, so a test can kill the run in the middle of an epoch.

    Counts the examples it reads, so the test sees what this process trained on.
    """

    def __init__(self, x, y, seconds: float):
        super().__init__(x, y)
        self.seconds = seconds
        self.examples_read = 0

    def read(self, positions):
        time.sleep(self.seconds)
        self.examples_read += len(positions)
        return super().read(positions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--read-sleep", type=float, default=0.0)
    args = parser.parse_args()
    x, y = synthetic_data()
    source = SlowSource(x[:448], y[:448], args.read_sleep)
    train = sources.stream(source, steps_per_call=STEPS_PER_CALL)
    counted = CountSteps()
    state, history = fnlearn.fit(
        model(), train, None, loss="sparse_categorical_crossentropy",
        optimizer=optim.keras_adam(), metrics=["accuracy"], epochs=args.epochs,
        batch_size=BATCH_SIZE, validation_data=sources.ArraySource(x[448:], y[448:]), seed=7,
        verbose=0, resume=args.resume,
        callbacks=[ModelCheckpoint(args.directory, keep=2, save_every_steps=SAVE_EVERY_STEPS),
                   counted])
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(args.out, **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves})
    print(f"this process: steps {counted.first_step}..{counted.last_step}, "
          f"{source.examples_read} examples read", flush=True)
    print(json.dumps(history.history), flush=True)


if __name__ == "__main__":
    main()

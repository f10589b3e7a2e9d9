"""Trains a small classifier with a checkpoint every epoch; the kill-and-resume test runs it.

Usage: python tests/resume_worker.py CHECKPOINT_DIR OUT.npz [--resume] [--epochs N]
[--epoch-sleep SECONDS]. Writes every leaf of the final ``TrainState`` to ``OUT.npz``.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import fnlearn
from fnlearn import nn, optim
from fnlearn.callbacks import EarlyStopping, ModelCheckpoint


class SlowEpochs(fnlearn.Callback):
    """Sleeps after each epoch, so a test can kill the process at a random point of a run."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_epoch_end(self, epoch, state, logs, history):
        time.sleep(self.seconds)


class CountSteps(fnlearn.Callback):
    """The steps and epochs this process runs: from the state it starts at (a restored one
    when resuming, as ModelCheckpoint before it hands it on) to the last."""

    def on_train_begin(self, state, history, resume):
        self.first_step, self.first_epoch = int(state.step), int(state.epoch)

    def on_train_end(self, state, history):
        self.last_step, self.last_epoch = int(state.step), int(state.epoch)


def synthetic_data(n: int = 512, features: int = 8, classes: int = 3, seed: int = 0):
    """Gaussian inputs labelled by a fixed random linear map."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(features, classes)), axis=1).astype(np.int32)
    return x, y


def model() -> nn.Layer:
    return nn.serial(nn.Dense(32, "relu"), nn.Dropout(0.25), nn.Dense(3, "softmax"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--epoch-sleep", type=float, default=0.0)
    args = parser.parse_args()
    x, y = synthetic_data()
    state, history = fnlearn.fit(
        model(), x[:448], y[:448], loss="sparse_categorical_crossentropy",
        optimizer=optim.keras_adam(), metrics=["accuracy"], epochs=args.epochs, batch_size=32,
        validation_data=(x[448:], y[448:]), seed=7, verbose=0, resume=args.resume,
        callbacks=[ModelCheckpoint(args.directory, keep=2),
                   EarlyStopping(patience=100),
                   SlowEpochs(args.epoch_sleep), counted := CountSteps()])
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(args.out, **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves})
    print(f"this process: epochs {counted.first_epoch}..{counted.last_epoch}, steps "
          f"{counted.first_step}..{counted.last_step}", flush=True)
    print(f"done: epoch {int(state.epoch)}, step {int(state.step)}, "
          f"val_loss {history.history['val_loss'][-1]:.6f}", flush=True)


if __name__ == "__main__":
    main()

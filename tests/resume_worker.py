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
                   SlowEpochs(args.epoch_sleep)])
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(args.out, **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves})
    print(f"done: epoch {int(state.epoch)}, step {int(state.step)}, "
          f"val_loss {history.history['val_loss'][-1]:.6f}", flush=True)


if __name__ == "__main__":
    main()

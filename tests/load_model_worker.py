"""Loads a saved model and trains it for more epochs, with no model code of its own.

Usage: python tests/load_model_worker.py SAVED_MODEL DATA.npz EPOCHS OUT.npz. Trains the
loaded state up to EPOCHS (a total, as ``fit`` counts) on ``x``, ``y`` from DATA.npz
with the optimizer the model recorded, and writes every leaf of the final state to
OUT.npz (``leaf_0``, ``leaf_1``, ...) with the last epoch's ``loss``.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

import fnlearn as fl


def main() -> None:
    saved, data, epochs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with np.load(data, allow_pickle=False) as arrays:
        x, y = arrays["x"], arrays["y"]
    model, state = fl.load_model(saved)
    state, history = fl.fit(model, x, y, loss="sparse_categorical_crossentropy",
                            optimizer=fl.saving.load_optimizer(saved), batch_size=32,
                            epochs=epochs, state=state, verbose=0)
    leaves = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}
    np.savez(out, loss=np.float64(history.history["loss"][-1]), **leaves)


if __name__ == "__main__":
    main()

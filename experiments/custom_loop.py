"""The article's MNIST MLP trained by a loop you write: ``fnlearn.train_step`` in plain Python.

The shape of the article's PyTorch loop (and of TensorFlow's custom training loop
with ``GradientTape``): for each epoch, for each batch, one step. The step is
``fnlearn.train_step``, jitted once; the batches come from ``fnlearn.epoch_batches``,
the same shuffled and padded batches ``fit`` draws, so with the same seed this loop
ends with the same parameters as ``fit``, bit for bit (``--check`` shows it).

    python experiments/custom_loop.py [--data-dir DIR] [--epochs 5] [--check]
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time

import jax
import numpy as np

import fnlearn as fl


def train(x, y, *, epochs: int, batch_size: int, seed: int, log_every: int = 0):
    """Trains the article's MLP with a hand-written loop; returns the final ``TrainState``."""
    model, optimizer = fl.models.article_mlp(), fl.optim.keras_adam()
    state = fl.init_state(model, optimizer, x.shape[1:], seed=seed)
    step = jax.jit(functools.partial(
        fl.train_step, model=model, loss="sparse_categorical_crossentropy",
        optimizer=optimizer, metrics=("accuracy",)))
    x, y = jax.device_put(x), jax.device_put(y)
    for epoch in range(epochs):
        index, mask = fl.epoch_batches(state, len(x), batch_size)
        for i, (rows, real) in enumerate(zip(index, mask)):
            state, logs = step(state, x[rows], y[rows], mask=real)
            if log_every and (i + 1) % log_every == 0:
                print(f"Epoch [{epoch + 1}/{epochs}], Step [{i + 1}/{len(index)}], "
                      f"Loss: {float(logs['loss']):.4f}", flush=True)
        state = state._replace(epoch=state.epoch + 1)
    return state


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four MNIST IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="also train with fit and compare the parameters bit for bit")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="unused; for the runner")
    args = parser.parse_args(argv)

    (x, y), (x_test, y_test) = fl.data.load_mnist(data_dir=args.data_dir)
    x, y = x[:args.limit], y[:args.limit]
    started = time.perf_counter()
    state = train(x, y, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                  log_every=500)
    print(f"custom loop: {args.epochs} epochs in {time.perf_counter() - started:.1f} s")
    model = fl.models.article_mlp()
    results = fl.evaluate(model, state.params, x_test, y_test,
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"Test accuracy: {results['accuracy'] * 100:.2f}%")
    out = {"state": state, "test_accuracy": results["accuracy"]}
    if args.check:
        fitted, _ = fl.fit(model, x, y, loss="sparse_categorical_crossentropy",
                           optimizer=fl.optim.keras_adam(), metrics=["accuracy"],
                           epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                           verbose=0)
        pairs = list(zip(jax.tree.leaves(state), jax.tree.leaves(fitted)))
        same = sum(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
        print(f"custom loop vs fit: {same}/{len(pairs)} leaves of the TrainState bit-identical")
        out["identical_leaves"], out["leaves"] = same, len(pairs)
    return out


if __name__ == "__main__":
    main()

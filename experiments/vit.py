"""A Vision Transformer on MNIST: 7x7 patches as 16 tokens, a class token, 4 pre-norm blocks.

``fnlearn.models.mnist_vit``: a stride-7 convolution turns each 7x7 patch into a token of
64 features, a learned class token goes first and learned position embeddings are
added; four ``TransformerEncoderLayer(64, 4, 128, activation="gelu", norm_first=True)``
blocks, a LayerNorm, and a Linear on the class token. AdamW (lr 1e-3, weight decay
0.05) with one epoch of linear warm-up then cosine decay to zero, batch 128, sparse
categorical cross-entropy on the logits, the test set evaluated after each epoch.

    python experiments/vit.py [--epochs N] [--train-size N] [--depth N]
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time

import numpy as np
import optax

import fnlearn as fl


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--depth", type=int, default=4, help="encoder blocks")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp", type=int, default=128, help="feed-forward width")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--train-size", type=int, default=None,
                        help="train on the first N training images only (default: all)")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                        help="0 silent, 1 progress bar, 2 one line per epoch (default)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/vit"),
                        help="folder for the plots (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "train_size", "depth", "width", "heads", "mlp"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    (x_train, y_train), (x_test, y_test) = data = fl.load_mnist(data_dir=args.data_dir)
    x_train, y_train = x_train[:args.train_size, ..., None], y_train[:args.train_size]
    x_test = x_test[..., None]
    print(f"MNIST from {data.source}: {len(x_train)} train, {len(x_test)} test images")
    model = fl.models.mnist_vit(7, args.width, args.depth, args.heads, args.mlp, args.dropout)
    print(fl.nn.summary(model, x_train.shape[1:]))
    steps = -(-len(x_train) // args.batch_size)
    # optax counts the warmup inside decay_steps: the warmup ends a step before the run.
    total = max(2, args.epochs * steps)
    warmup = min(max(1, round(args.warmup_epochs * steps)), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, total)
    optimizer = optax.adamw(schedule, weight_decay=args.weight_decay)
    started = time.perf_counter()
    state, history = fl.fit(
        model, x_train, y_train, loss=functools.partial(
            fl.losses.sparse_categorical_crossentropy, from_logits=True),
        optimizer=optimizer, metrics=["accuracy"], epochs=args.epochs,
        batch_size=args.batch_size, validation_data=(x_test, y_test), seed=args.seed,
        verbose=args.verbose)
    fit_seconds = time.perf_counter() - started
    accuracy = history.history["val_accuracy"][-1]
    print(f"Test loss: {history.history['val_loss'][-1]:.4f}")
    print(f"Test accuracy: {accuracy * 100:.2f}%")
    print(f"Training took {fit_seconds:.0f}s")
    if not args.no_plots:
        args.out.mkdir(parents=True, exist_ok=True)
        predicted = np.argmax(fl.predict(model, state.params, x_test), axis=-1)
        plots = [fl.plots.plot_history(history, args.out / "training_curves.png"),
                 fl.plots.plot_confusion_matrix(fl.plots.confusion_matrix(y_test, predicted, 10),
                                                args.out / "confusion_matrix.png")]
        print("Plots saved to " + ", ".join(str(plot.path) for plot in plots))
    return {"test_accuracy": accuracy, "history": history, "state": state,
            "source": data.source, "seconds": fit_seconds}


if __name__ == "__main__":
    main()

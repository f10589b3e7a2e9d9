"""MNIST digits with a small MLP: the article's Keras program in fnlearn.

Flatten -> Dense 128 relu -> Dropout 0.2 -> Dense 10 softmax, Keras's Adam
defaults, sparse categorical cross-entropy, 5 epochs of batch 32, validation on
the test set after each epoch. The images stay uint8 on the device; the model's
first layer divides by 255 exactly as the article's ``images / 255.0``.

    python experiments/mnist.py [--dataset mnist|fashion_mnist] [--data-dir DIR] [--epochs 5]
                                [--out out/mnist] [--logdir logs/mnist]
                                [--policy float32|mixed_bfloat16|mixed_float16]

``--dataset fashion_mnist`` trains the same model on Fashion-MNIST, as swapping
``keras.datasets.mnist`` for ``keras.datasets.fashion_mnist`` does in Keras.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import fnlearn as fl
from fnlearn.logging import CSVLogger, TensorBoard

LOADERS = {"mnist": fl.data.load_mnist, "fashion_mnist": fl.data.load_fashion_mnist}
TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=tuple(LOADERS), default="mnist",
                        help="which dataset (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--source", choices=fl.data.SOURCES, default="auto",
                        help="where the data comes from (default: %(default)s; see docs/data.md)")
    parser.add_argument("--cache-dir", type=pathlib.Path, default=None,
                        help="where downloads are kept (default: $FNLEARN_DATA_CACHE, else "
                             "~/.cache/fnlearn)")
    parser.add_argument("--no-verify", action="store_true",
                        help="load IDX files that are not the official ones (your own data "
                             "in the same format) without the digest check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", choices=sorted(fl.nn.policy.POLICIES), default="float32",
                        help="precision policy: mixed_bfloat16 computes in bfloat16, "
                             "mixed_float16 in float16 with loss scaling; weights float32 "
                             "(default: %(default)s)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                        help="0 silent, 1 progress bar, 2 one line per epoch (default)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/mnist"),
                        help="folder for the plots (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    parser.add_argument("--logdir", type=pathlib.Path, default=None,
                        help="write TensorBoard event files and training.csv (Keras's CSV) here")
    parser.add_argument("--checkpoint-dir", type=pathlib.Path, default=None,
                        help="save the training state after every epoch here (Orbax; keeps 3)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --checkpoint-dir "
                             "(default folder: OUT/checkpoints)")
    parser.add_argument("--export", type=pathlib.Path, default=None, metavar="PATH",
                        help="write the trained inference function (jax.export) to PATH; "
                             "serve it with: python -m fnlearn.serve PATH images.npy")
    parser.add_argument("--export-float", action="store_true",
                        help="with --export: the file takes float32 pixels / 255.0 in [0, 1], "
                             "as TensorFlow's tutorial clients send, instead of uint8 0-255")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = data = LOADERS[args.dataset](
        source=args.source, data_dir=args.data_dir, cache_dir=args.cache_dir,
        verify=not args.no_verify)
    print(f"{TITLES[args.dataset]} from {data.source}: {len(x_train)} train, "
          f"{len(x_test)} test images")

    model = fl.nn.with_policy(fl.models.article_mlp(), args.policy)
    loss = fl.losses.sparse_categorical_crossentropy
    checkpoint_dir = args.checkpoint_dir
    if args.resume and checkpoint_dir is None:
        checkpoint_dir = args.out / "checkpoints"
    callbacks = [fl.ModelCheckpoint(checkpoint_dir, keep=3)] if checkpoint_dir else []
    if args.logdir:
        callbacks += [TensorBoard(args.logdir), CSVLogger(args.logdir / "training.csv")]
    state, history = fl.fit(
        model, x_train, y_train, loss=loss, optimizer=fl.optim.keras_adam(),
        metrics=["accuracy"], epochs=args.epochs, batch_size=args.batch_size,
        validation_data=(x_test, y_test), seed=args.seed, verbose=args.verbose,
        callbacks=callbacks, resume=args.resume)
    fit_seconds = time.perf_counter() - started

    results = fl.evaluate(model, state.params, x_test, y_test, loss=loss, metrics=["accuracy"])
    print(f"Test accuracy: {results['accuracy'] * 100:.2f}%")

    if args.export:
        path = fl.export_model(model, state.params, x_test.shape[1:], x_test.dtype, args.export,
                               float_inputs=args.export_float)
        print(f"Exported the inference function to {path}")
    if not args.no_plots:
        args.out.mkdir(parents=True, exist_ok=True)
        predicted = np.argmax(fl.predict(model, state.params, x_test), axis=-1)
        matrix = fl.plots.confusion_matrix(y_test, predicted, 10)
        plots = [fl.plots.plot_history(history, args.out / "training_curves.png"),
                 fl.plots.plot_confusion_matrix(matrix, args.out / "confusion_matrix.png"),
                 fl.plots.plot_misclassified(x_test, y_test, predicted,
                                             args.out / "misclassified.png")]
        print("Plots saved to " + ", ".join(str(plot.path) for plot in plots))
    return {"test_accuracy": results["accuracy"], "history": history, "state": state,
            "source": data.source, "dataset": args.dataset, "seconds": fit_seconds}


if __name__ == "__main__":
    main()

"""MNIST rows as sequences: PyTorch examples' ``mnist_rnn/main.py`` in fnlearn.

``LSTM(input_size=28, hidden_size=64, batch_first=True)`` over the 28 rows of each
image, its last output, ``BatchNorm1d(64)``, dropout 0.25, ``Linear(64, 32)`` relu,
dropout 0.5, ``Linear(32, 10)``, log-softmax (``fnlearn.models.torch_mnist_rnn``);
NLL loss, Adadelta lr 0.1 with StepLR (gamma 0.7 each epoch), batch 64, 14 epochs,
the test set evaluated after each epoch (the last is the reported test accuracy).
The program's ``Dropout2d`` layers get ``(N, 64)`` and ``(N, 32)`` inputs, where
PyTorch 2.13 drops single elements (warning that 2-D inputs are deprecated): they are
plain dropouts here.

    python experiments/rnn.py [--epochs N] [--train-size N] [--unroll K]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import fnlearn as fl


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--train-size", type=int, default=None,
                        help="train on the first N training images only (default: all)")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unroll", type=int, default=1,
                        help="LSTM time steps per loop iteration (speed only)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                        help="0 silent, 1 progress bar, 2 one line per epoch (default)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/rnn"),
                        help="folder for the plots (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "train_size", "unroll"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    (x_train, y_train), (x_test, y_test) = data = fl.load_mnist(data_dir=args.data_dir)
    x_train, y_train = x_train[:args.train_size], y_train[:args.train_size]
    print(f"MNIST from {data.source}: {len(x_train)} train, {len(x_test)} test images, "
          "each 28 time steps of 28 pixels")
    model = fl.models.torch_mnist_rnn(unroll=args.unroll)
    print(fl.nn.summary(model, x_train.shape[1:]))
    optimizer = fl.optim.torch_adadelta(
        schedule=fl.optim.step_lr(args.lr, step_size=1, gamma=args.gamma))
    started = time.perf_counter()
    state, history = fl.fit(
        model, x_train, y_train, loss="nll_loss", optimizer=optimizer, metrics=["accuracy"],
        epochs=args.epochs, batch_size=args.batch_size, validation_data=(x_test, y_test),
        seed=args.seed, verbose=args.verbose)
    fit_seconds = time.perf_counter() - started
    # The test set was evaluated after the last epoch, with the final parameters.
    accuracy = history.history["val_accuracy"][-1]
    print(f"Test loss: {history.history['val_loss'][-1]:.4f}")
    print(f"Test accuracy: {accuracy * 100:.2f}%")
    print(f"Training took {fit_seconds:.0f}s")
    if not args.no_plots:
        args.out.mkdir(parents=True, exist_ok=True)
        predicted = np.argmax(fl.predict(model, state.params, x_test,
                                         model_state=state.model_state), axis=-1)
        plots = [fl.plots.plot_history(history, args.out / "training_curves.png"),
                 fl.plots.plot_confusion_matrix(fl.plots.confusion_matrix(y_test, predicted, 10),
                                                args.out / "confusion_matrix.png")]
        print("Plots saved to " + ", ".join(str(plot.path) for plot in plots))
    return {"test_accuracy": accuracy, "history": history, "state": state,
            "source": data.source, "seconds": fit_seconds}


if __name__ == "__main__":
    main()

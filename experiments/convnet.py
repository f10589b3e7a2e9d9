"""MNIST with a convnet: Keras's "Simple MNIST convnet" or PyTorch's ``mnist/main.py`` in fnlearn.

``--recipe keras``: Conv 32 -> pool -> Conv 64 -> pool -> Dropout 0.5 -> Dense 10
softmax; Keras's Adam, categorical cross-entropy on one-hot labels, batch 128,
15 epochs, the last 10% of the training set held out (``validation_split=0.1``).

``--recipe torch``: Conv 32 -> Conv 64 -> pool -> Dropout 0.25 -> Linear 128 ->
Dropout 0.5 -> Linear 10 -> log-softmax; NLL loss, Adadelta lr 1.0 with StepLR
(gamma 0.7 each epoch), batch 64, 14 epochs, the test set evaluated after each epoch
(the last of these is the reported test accuracy; the program's test batch of 1000
changes only the summation order of the mean).

Images stay uint8 on the device, shaped (N, 28, 28, 1); each model's first layers
scale them as the reference program's preprocessing does (``fnlearn.models``).

    python experiments/convnet.py --recipe keras|torch [--epochs N] [--train-size N]
                                  [--policy float32|mixed_bfloat16|mixed_float16]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import fnlearn as fl

RECIPES = {
    "keras": {"epochs": 15, "batch_size": 128},
    "torch": {"epochs": 14, "batch_size": 64},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: the recipe's (keras 15, torch 14)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the recipe's (keras 128, torch 64)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="train on the first N training images only (default: all)")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", choices=sorted(fl.nn.policy.POLICIES), default="float32",
                        help="precision policy: mixed_bfloat16 computes in bfloat16, "
                             "mixed_float16 in float16 with loss scaling; weights float32 "
                             "(default: %(default)s)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                        help="0 silent, 1 progress bar, 2 one line per epoch (default)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="folder for the plots (default: out/convnet_<recipe>)")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "train_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def _fit_keras(model, x_train, y_train, args, epochs, batch_size):
    one_hot = np.eye(10, dtype=np.float32)[y_train]
    state, history = fl.fit(
        model, x_train, one_hot, loss="categorical_crossentropy",
        optimizer=fl.optim.keras_adam(), metrics=["accuracy"], epochs=epochs,
        batch_size=batch_size, validation_split=0.1, seed=args.seed, verbose=args.verbose)
    return state, history


def _fit_torch(model, x_train, y_train, x_test, y_test, args, epochs, batch_size):
    optimizer = fl.optim.torch_adadelta(schedule=fl.optim.step_lr(1.0, step_size=1, gamma=0.7))
    state, history = fl.fit(
        model, x_train, y_train, loss="nll_loss", optimizer=optimizer, metrics=["accuracy"],
        epochs=epochs, batch_size=batch_size, validation_data=(x_test, y_test),
        seed=args.seed, verbose=args.verbose)
    return state, history


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    recipe = RECIPES[args.recipe]
    epochs = args.epochs or recipe["epochs"]
    batch_size = args.batch_size or recipe["batch_size"]
    load = fl.load_mnist if args.dataset == "mnist" else fl.load_fashion_mnist
    (x_train, y_train), (x_test, y_test) = data = load(data_dir=args.data_dir)
    x_train, y_train = x_train[:args.train_size], y_train[:args.train_size]
    x_train, x_test = x_train[..., None], x_test[..., None]
    print(f"{args.dataset} from {data.source}: {len(x_train)} train, {len(x_test)} test images")
    model = fl.models.keras_convnet() if args.recipe == "keras" else fl.models.torch_mnist_net()
    model = fl.nn.with_policy(model, args.policy)
    print(fl.nn.summary(model, x_train.shape[1:]))

    started = time.perf_counter()
    if args.recipe == "keras":
        state, history = _fit_keras(model, x_train, y_train, args, epochs, batch_size)
        results = fl.evaluate(model, state.params, x_test, np.eye(10, dtype=np.float32)[y_test],
                              loss="categorical_crossentropy", metrics=["accuracy"],
                              model_state=state.model_state)
    else:
        state, history = _fit_torch(model, x_train, y_train, x_test, y_test, args, epochs,
                                    batch_size)
        # The test set was evaluated after the last epoch, with the final parameters.
        results = {"loss": history.history["val_loss"][-1],
                   "accuracy": history.history["val_accuracy"][-1]}
    fit_seconds = time.perf_counter() - started
    print(f"Test loss: {results['loss']:.4f}")
    print(f"Test accuracy: {results['accuracy'] * 100:.2f}%")
    print(f"Training took {fit_seconds:.0f}s ({args.policy})")

    if not args.no_plots:
        out = args.out or pathlib.Path(f"out/convnet_{args.recipe}")
        out.mkdir(parents=True, exist_ok=True)
        predicted = np.argmax(fl.predict(model, state.params, x_test,
                                         model_state=state.model_state), axis=-1)
        matrix = fl.plots.confusion_matrix(y_test, predicted, 10)
        plots = [fl.plots.plot_history(history, out / "training_curves.png"),
                 fl.plots.plot_confusion_matrix(matrix, out / "confusion_matrix.png"),
                 fl.plots.plot_misclassified(x_test[..., 0], y_test, predicted,
                                             out / "misclassified.png")]
        print("Plots saved to " + ", ".join(str(plot.path) for plot in plots))
    return {"test_accuracy": results["accuracy"], "history": history, "state": state,
            "source": data.source, "seconds": fit_seconds}


if __name__ == "__main__":
    main()

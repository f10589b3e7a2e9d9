"""The two MNIST convnet recipes in Keras on TensorFlow, through model.fit, with epoch timing."""

import os
import time

import numpy as np
from convnet_recipe import load_split, parse_args, report_epochs
from mnist_idx import missing


def build(recipe: str, keras):
    """The recipe's model, compiled with its optimizer and loss.

    Args:
      recipe: "keras" (the Keras example verbatim) or "torch" (PyTorch's Net in Keras layers).
      keras: the `tensorflow.keras` module.

    Returns:
      `(model, callbacks)`: the compiled model and the recipe's extra fit callbacks.
    """
    layers = keras.layers
    if recipe == "keras":
        model = keras.Sequential([
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ])  # fmt: skip
        model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        return model, []
    # log_softmax + NLL is cross-entropy on logits.
    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, 3, activation="relu"),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(10),
    ])  # fmt: skip
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.Adadelta(learning_rate=1.0, rho=0.9, epsilon=1e-6),
        metrics=["accuracy"],
    )
    step_lr = keras.callbacks.LearningRateScheduler(lambda epoch: 1.0 * 0.7**epoch)
    return model, [step_lr]


def main(argv: list[str] | None = None) -> None:
    """Train epochs of training + validation, then print `BENCH_RESULT`.

    Args:
      argv: command line, `None` for `sys.argv[1:]`.
    """
    args = parse_args(argv, __doc__)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        from tensorflow import keras
    except ImportError:
        missing("tensorflow")

    keras.utils.set_random_seed(args.seed)
    # mixed_bfloat16: Keras's global policy, set before the model is built.
    keras.mixed_precision.set_global_policy(args.policy)
    x, y, xv, yv = load_split(args)
    mean, std = (0.1307, 0.3081) if args.recipe == "torch" else (0.0, 1.0)
    x = (x.astype("float32") / 255 - mean) / std
    xv = (xv.astype("float32") / 255 - mean) / std
    if args.recipe == "keras":
        y, yv = np.eye(10, dtype="float32")[y], np.eye(10, dtype="float32")[yv]
    model, recipe_callbacks = build(args.recipe, keras)
    marks = []

    class EpochTimer(keras.callbacks.Callback):
        # fit calls on_test_begin for its validation pass, between training and on_epoch_end.
        def on_epoch_begin(self, epoch, logs=None):
            marks.append([time.perf_counter()])

        def on_test_begin(self, logs=None):
            marks[-1].append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            marks[-1].append(time.perf_counter())

    # validation_data is the last 10% of the training set for the keras recipe: the same
    # examples validation_split=0.1 holds out (load_split cuts them), and the test set otherwise.
    history = model.fit(
        x,
        y,
        batch_size=args.settings.batch_size,
        epochs=args.epochs,
        validation_data=(xv, yv),
        validation_batch_size=args.settings.val_batch_size,
        callbacks=[*recipe_callbacks, EpochTimer()],
        verbose=0,
    )
    report_epochs(
        args,
        len(x),
        [end - begin for begin, _, end in marks],
        float(history.history["val_accuracy"][-1]),
        f"tensorflow {tf.__version__}, keras {keras.__version__}",
        train_seconds=[test - begin for begin, test, _ in marks],
    )


if __name__ == "__main__":
    main()

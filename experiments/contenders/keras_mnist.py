"""The article's MNIST program in Keras on TensorFlow, its recipe verbatim, with epoch timing."""

import os
import time

from mnist_idx import load_mnist, missing, parse_args, report


def main(argv: list[str] | None = None) -> None:
    """Train and validate every epoch on the test set, evaluate, then print `BENCH_RESULT`.

    Args:
      argv: command line, `None` for `sys.argv[1:]`.
    """
    args = parse_args(argv, __doc__)
    # Quiet TensorFlow's start-up banner; it goes to stderr and costs nothing to drop.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        from tensorflow.keras import callbacks, layers, models
    except ImportError:
        missing("tensorflow")

    tf.keras.utils.set_random_seed(args.seed)
    (train_images, train_labels), (test_images, test_labels) = load_mnist(
        args.data_dir, args.limit, args.source
    )
    train_images, test_images = train_images / 255.0, test_images / 255.0

    epoch_ends = []

    class EpochTimer(callbacks.Callback):
        # Keras calls on_epoch_end after that epoch's validation, so each span includes it.
        def on_epoch_end(self, epoch, logs=None):
            epoch_ends.append((time.perf_counter(), time.time()))

    model = models.Sequential(
        [
            layers.Flatten(input_shape=(28, 28)),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.2),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(
        train_images,
        train_labels,
        epochs=args.epochs,
        batch_size=args.batch_size,
        validation_data=(test_images, test_labels),
        callbacks=[EpochTimer()],
        verbose=0,
    )
    fit_s = time.perf_counter() - start
    _, test_accuracy = model.evaluate(test_images, test_labels, verbose=0)

    ends = [start] + [end for end, _ in epoch_ends]
    report(
        first_epoch_s=ends[1] - start,
        first_epoch_end_unix=epoch_ends[0][1],
        fit_s=fit_s,
        epoch_seconds=[b - a for a, b in zip(ends, ends[1:], strict=False)],
        val_accuracy=history.history["val_accuracy"][-1],
        test_accuracy=float(test_accuracy),
        framework_version=f"tensorflow {tf.__version__}, keras {tf.keras.__version__}",
    )


if __name__ == "__main__":
    main()

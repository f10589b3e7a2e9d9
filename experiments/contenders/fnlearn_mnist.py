"""The article's MNIST recipe in fnlearn: the Keras model and `fit` call, written functionally."""

import time

from mnist_idx import load_mnist, missing, parse_args, report


def main(argv: list[str] | None = None) -> None:
    """Train and validate every epoch on the test set, evaluate, then print `BENCH_RESULT`.

    Args:
      argv: command line, `None` for `sys.argv[1:]`.
    """
    args = parse_args(argv, __doc__)
    try:
        import jax

        import fnlearn as fl
    except ImportError:
        missing("fnlearn")

    # The same numpy reader as the other contenders, so data loading costs the same everywhere.
    (x, y), (xt, yt) = load_mnist(args.data_dir, args.limit, args.source)
    model = fl.models.article_mlp()
    start, start_unix = time.perf_counter(), time.time()
    state, history = fl.fit(
        model,
        x,
        y,
        loss=fl.losses.sparse_categorical_crossentropy,
        optimizer=fl.optim.keras_adam(),
        metrics=["accuracy"],
        epochs=args.epochs,
        batch_size=args.batch_size,
        validation_data=(xt, yt),
        seed=args.seed,
        verbose=0,
    )
    fit_s = time.perf_counter() - start
    result = fl.evaluate(
        model,
        state.params,
        xt,
        yt,
        loss=fl.losses.sparse_categorical_crossentropy,
        metrics=["accuracy"],
    )

    epoch_seconds = list(history.epoch_seconds)
    # Without per-epoch host work fit compiles all epochs into one call and reports each epoch
    # as the average; the first trained epoch then only exists when the whole fit returns.
    chunked = len(epoch_seconds) > 1 and len(set(epoch_seconds)) == 1
    first_epoch_s = fit_s if chunked else epoch_seconds[0]
    report(
        first_epoch_s=first_epoch_s,
        first_epoch_end_unix=start_unix + first_epoch_s,
        epochs_in_one_call=chunked,
        fit_s=fit_s,
        epoch_seconds=epoch_seconds,
        val_accuracy=float(history.history["val_accuracy"][-1]),
        test_accuracy=float(result["accuracy"]),
        framework_version=f"fnlearn {getattr(fl, '__version__', 'dev')}, jax {jax.__version__}",
    )


if __name__ == "__main__":
    main()

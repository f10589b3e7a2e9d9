"""The two MNIST convnet recipes in fnlearn: `fl.models`, `fl.fit`, epoch timing."""

import time

from convnet_recipe import load_split, parse_args, report_epochs
from mnist_idx import missing


def main(argv: list[str] | None = None) -> None:
    """Train epochs of training + validation with `fl.fit`, then print `BENCH_RESULT`.

    Args:
      argv: command line, `None` for `sys.argv[1:]`.
    """
    args = parse_args(argv, __doc__)
    try:
        import jax
        import numpy as np

        import fnlearn as fl
    except ImportError:
        missing("fnlearn")

    class EpochClock(fl.Callback):
        """Timestamps every epoch's end (training plus validation)."""

        def on_train_begin(self, state, history, resume):
            self.times = [time.perf_counter()]

        def on_epoch_end(self, epoch, state, logs, history):
            self.times.append(time.perf_counter())
            self.accuracy = logs.get("val_accuracy")
            return False

    x, y, xv, yv = load_split(args)
    if args.recipe == "keras":
        model, loss, optimizer = fl.models.keras_convnet(), "categorical_crossentropy", \
            fl.optim.keras_adam()
        y, yv = np.eye(10, dtype=np.float32)[y], np.eye(10, dtype=np.float32)[yv]
    else:
        model, loss = fl.models.torch_mnist_net(), "nll_loss"
        optimizer = fl.optim.torch_adadelta(schedule=fl.optim.step_lr(1.0, 1, 0.7))
    clock = EpochClock()
    # verbose=0 with an on_epoch_end callback: one compiled call per epoch, validation in it.
    fl.fit(model, x, y, loss=loss, optimizer=optimizer, metrics=["accuracy"],
           epochs=args.epochs, batch_size=args.settings.batch_size,
           validation_data=(xv, yv), seed=args.seed, verbose=0, callbacks=[clock],
           policy=args.policy)
    seconds = list(np.diff(clock.times))
    report_epochs(args, len(x), seconds, clock.accuracy,
                  f"fnlearn {fl.__version__}, jax {jax.__version__}")


if __name__ == "__main__":
    main()

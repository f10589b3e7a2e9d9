"""The two sequence recipes in fnlearn: `fl.models`, `fl.fit`, epoch timing."""

import functools
import time

from mnist_idx import missing
from sequence_recipe import VIT, load_split, parse_args, report_epochs


def main(argv=None) -> None:
    """Train epochs of training + validation with `fl.fit`, then print `BENCH_RESULT`."""
    args = parse_args(argv, __doc__)
    try:
        import jax
        import numpy as np
        import optax

        import fnlearn as fl
    except ImportError:
        missing("fnlearn")

    class EpochClock(fl.Callback):
        """Timestamps every epoch's end (training plus validation)."""

        def on_train_begin(self, state, history, resume):
            self.times, self.accuracies = [time.perf_counter()], []

        def on_epoch_end(self, epoch, state, logs, history):
            self.times.append(time.perf_counter())
            self.accuracies.append(logs.get("val_accuracy"))
            print(f"epoch {epoch + 1}: test accuracy {self.accuracies[-1] * 100:.2f}%, "
                  f"{self.times[-1] - self.times[-2]:.1f}s", flush=True)
            return False

    x, y, xv, yv = load_split(args)
    batch = args.settings.batch_size
    if args.recipe == "rnn":
        model, loss = fl.models.torch_mnist_rnn(), "nll_loss"
        optimizer = fl.optim.torch_adadelta(schedule=fl.optim.step_lr(0.1, 1, 0.7))
    else:
        model, loss = fl.models.mnist_vit(**{k: VIT[k] for k in (
            "patch", "width", "depth", "heads", "mlp")}), functools.partial(
            fl.losses.sparse_categorical_crossentropy, from_logits=True)
        x, xv = x[..., None], xv[..., None]
        steps = -(-len(x) // batch)
        optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(
            0.0, VIT["lr"], VIT["warmup_epochs"] * steps,
            (args.schedule_epochs or args.epochs) * steps), weight_decay=VIT["weight_decay"])
    clock = EpochClock()
    fl.fit(model, x, y, loss=loss, optimizer=optimizer, metrics=["accuracy"],
           epochs=args.epochs, batch_size=batch, validation_data=(xv, yv), seed=args.seed,
           verbose=0, callbacks=[clock])
    report_epochs(args, len(x), list(np.diff(clock.times)), clock.accuracies,
                  f"fnlearn {fl.__version__}, jax {jax.__version__}")


if __name__ == "__main__":
    main()

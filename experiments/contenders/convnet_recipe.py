"""What the convnet contenders share: the two recipes, their data split, command line and result.

Two recipes, each the original program's settings:

- `keras`: the Keras "Simple MNIST convnet" (batch 128, Adam, one-hot categorical
  cross-entropy, `validation_split=0.1`: the last 10% of the training set is validated on).
- `torch`: PyTorch's examples/mnist `Net` (batch 64, Adadelta 1.0 with StepLR gamma 0.7 per
  epoch, NLL loss, the test set validated on in batches of 1000).

An "epoch" here is one pass of training then validation. With `--steps N` each epoch is a full
epoch scaled down: N steps on the first N x batch training examples (reshuffled every epoch)
and validation on the same fraction of the validation set, so that validation weighs as much as
in a full epoch and a run takes seconds. The first epoch pays for compilation; the later ones
give the steady-state throughput.
"""

import argparse
import os
import statistics
from dataclasses import dataclass

import numpy as np
from mnist_idx import load_mnist, report


@dataclass(frozen=True)
class Recipe:
    """One recipe's fixed settings.

    Attributes:
      batch_size: training batch size.
      val_batch_size: batch size of the validation pass.
      validation_split: fraction of the training set held out (0: validate on the test set).
    """

    batch_size: int
    val_batch_size: int
    validation_split: float


POLICIES = ("float32", "mixed_bfloat16")

RECIPES = {
    "keras": Recipe(batch_size=128, val_batch_size=128, validation_split=0.1),
    "torch": Recipe(batch_size=64, val_batch_size=1000, validation_split=0.0),
}


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    """Parse the command line every convnet contender shares.

    Args:
      argv: arguments, `None` for `sys.argv[1:]`.
      description: the contender's one-line description.

    Returns:
      The parsed arguments, `recipe` resolved to its `Recipe` in `args.settings`.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--source", choices=("idx", "sample"), default="idx")
    parser.add_argument("--epochs", type=int, default=2, help="passes of train + validation")
    parser.add_argument(
        "--steps", type=int, default=None, help="train this many steps per epoch (default: all)"
    )
    parser.add_argument("--limit", type=int, default=None, help="training subset size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--policy", choices=POLICIES, default="float32",
        help="mixed_bfloat16: bfloat16 computation, float32 weights (fnlearn's and Keras's "
        "policy, torch.autocast on the CPU)",
    )
    args = parser.parse_args(argv)
    if args.source == "idx" and not args.data_dir:
        parser.error("--data-dir (or FNLEARN_DATA_DIR) is required unless --source sample")
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    args.settings = RECIPES[args.recipe]
    return args


def load_split(
    args: argparse.Namespace,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The recipe's training and validation sets, uint8 images N x 28 x 28 x 1, int labels.

    Args:
      args: the parsed command line.

    Returns:
      `(train_x, train_y, val_x, val_y)`; with `--steps`, training cut to `steps x batch`
      examples and validation to the same fraction.
    """
    (x, y), (xt, yt) = load_mnist(args.data_dir, args.limit, args.source)
    x, xt = x[..., None], xt[..., None]
    if args.settings.validation_split:
        # Keras holds out the last fraction, before any shuffling.
        cut = int(len(x) * (1 - args.settings.validation_split))
        x, y, xt, yt = x[:cut], y[:cut], x[cut:], y[cut:]
    if args.steps:
        wanted = args.steps * args.settings.batch_size
        if wanted > len(x):
            raise SystemExit(f"--steps {args.steps} needs {wanted} examples, the data has {len(x)}")
        kept = max(1, round(len(xt) * wanted / len(x)))
        x, y, xt, yt = x[:wanted], y[:wanted], xt[:kept], yt[:kept]
    return x, y, xt, yt


def report_epochs(
    args: argparse.Namespace,
    train_images: int,
    epoch_seconds: list[float],
    val_accuracy: float,
    framework_version: str,
    train_seconds: list[float] | None = None,
    **extra: object,
) -> None:
    """Print `BENCH_RESULT` with the throughput of the first and of the later epochs.

    Args:
      args: the parsed command line.
      train_images: training images per epoch.
      epoch_seconds: seconds per epoch, each training plus its validation pass.
      val_accuracy: validation accuracy after the last epoch.
      framework_version: the libraries' versions.
      train_seconds: seconds per epoch without validation, where the framework tells them apart.
      **extra: more fields for the JSON.
    """
    later, later_train = epoch_seconds[1:], (train_seconds or [])[1:]
    report(
        recipe=args.recipe,
        policy=args.policy,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.settings.batch_size,
        train_images=train_images,
        epoch_seconds=epoch_seconds,
        first_epoch_s=epoch_seconds[0],
        first_img_s=train_images / epoch_seconds[0],
        steady_img_s=train_images / statistics.median(later) if later else None,
        train_seconds=train_seconds,
        steady_train_img_s=train_images / statistics.median(later_train) if later_train else None,
        val_accuracy=val_accuracy,
        framework_version=framework_version,
        cores=os.cpu_count(),
        **extra,
    )

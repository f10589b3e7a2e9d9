"""What the sequence contenders share: the two recipes, their command line and result.

- `rnn`: PyTorch examples' `mnist_rnn/main.py` (LSTM 64 over the 28 rows, batch 64,
  Adadelta 0.1 with StepLR gamma 0.7 per epoch, NLL loss, the test set validated on in
  batches of 1000).
- `vit`: a Vision Transformer on MNIST (7x7 patches, 16 tokens and a class token, width 64,
  4 pre-norm encoder blocks of 4 heads, MLP 128, GELU; AdamW 1e-3, weight decay 0.05,
  warm-up then cosine, batch 128, cross-entropy, validated on the test set).

An "epoch" is one pass of training then validation. With `--steps N` each epoch is N steps
on the first N x batch training images and validation on the same fraction of the test set.
The first epoch pays for compilation; the later ones give the steady state.
"""

import argparse
import os
import statistics
from dataclasses import dataclass

from mnist_idx import load_mnist, report


@dataclass(frozen=True)
class Recipe:
    """One recipe's fixed settings."""

    batch_size: int
    val_batch_size: int
    epochs: int


RECIPES = {"rnn": Recipe(64, 1000, 14), "vit": Recipe(128, 1000, 20)}
VIT = {"patch": 7, "width": 64, "depth": 4, "heads": 4, "mlp": 128, "lr": 1e-3,
       "weight_decay": 0.05, "warmup_epochs": 1}


def parse_args(argv, description: str) -> argparse.Namespace:
    """The command line every sequence contender shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--source", choices=("idx", "sample"), default="idx")
    parser.add_argument("--epochs", type=int, default=2, help="passes of train + validation")
    parser.add_argument("--schedule-epochs", type=int, default=None,
                        help="vit: the epochs the warm-up + cosine schedule spans "
                             "(default: --epochs)")
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    args = parser.parse_args(argv)
    if args.source == "idx" and not args.data_dir:
        parser.error("--data-dir (or FNLEARN_DATA_DIR) is required unless --source sample")
    if args.epochs < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--epochs and --steps must be >= 1")
    args.settings = RECIPES[args.recipe]
    return args


def load_split(args):
    """Training and test images (uint8, N x 28 x 28) and labels, cut to `--steps`."""
    (x, y), (xt, yt) = load_mnist(args.data_dir, None, args.source)
    if args.steps:
        wanted = args.steps * args.settings.batch_size
        if wanted > len(x):
            raise SystemExit(f"--steps {args.steps} needs {wanted} examples, the data has {len(x)}")
        kept = max(1, round(len(xt) * wanted / len(x)))
        x, y, xt, yt = x[:wanted], y[:wanted], xt[:kept], yt[:kept]
    return x, y, xt, yt


def report_epochs(args, train_images: int, epoch_seconds, accuracies, framework_version: str,
                  train_seconds=None) -> None:
    """Print `BENCH_RESULT` with every epoch's test accuracy and the throughputs."""
    later, later_train = epoch_seconds[1:], (train_seconds or [])[1:]
    report(recipe=args.recipe, steps=args.steps, epochs=args.epochs,
           batch_size=args.settings.batch_size, train_images=train_images,
           epoch_seconds=epoch_seconds, first_img_s=train_images / epoch_seconds[0],
           steady_img_s=train_images / statistics.median(later) if later else None,
           train_seconds=train_seconds,
           steady_train_img_s=(train_images / statistics.median(later_train)
                               if later_train else None),
           val_accuracy=accuracies[-1], val_accuracies=accuracies,
           framework_version=framework_version, cores=os.cpu_count())

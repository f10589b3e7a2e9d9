"""MNIST reader shared by the benchmark contenders: IDX gzip files through numpy only.

The contenders import this instead of fnlearn so that their timings carry no fnlearn or JAX
import cost.
"""

import argparse
import gzip
import json
import os
import sys

import numpy as np

# fnlearn's shipped sample: the same four files, named with a prefix, inside the package.
SAMPLE_DIR = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "fnlearn", "assets")
SAMPLE_PREFIX = "mnist-sample-"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: str) -> np.ndarray:
    """Read one gzipped IDX file into a uint8 array of the shape its header declares.

    Args:
      path: the `.gz` file.

    Returns:
      The array, e.g. N x 28 x 28 for images and N for labels.
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(
    data_dir: str | None, limit: int | None = None, source: str = "idx"
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST from a folder of IDX gz files, optionally cut to a subset.

    Args:
      data_dir: folder with the four standard MNIST `.gz` files (unused for the sample).
      limit: keep the first `limit` training examples and the first `limit // 2` test ones.
      source: "idx" for `data_dir`, "sample" for the sample shipped inside fnlearn.

    Returns:
      `((train_images, train_labels), (test_images, test_labels))`, uint8 images N x 28 x 28.
    """
    folder, prefix = (SAMPLE_DIR, SAMPLE_PREFIX) if source == "sample" else (data_dir, "")
    arrays = {name: read_idx(os.path.join(folder, prefix + f)) for name, f in FILES.items()}
    train = arrays["train_images"], arrays["train_labels"]
    test = arrays["test_images"], arrays["test_labels"]
    if limit:
        train = tuple(a[:limit] for a in train)
        test = tuple(a[: max(limit // 2, 1)] for a in test)
    return train, test


def parse_args(argv: list[str] | None, description: str, epochs: int = 5) -> argparse.Namespace:
    """Parse the command line every MNIST contender shares.

    Args:
      argv: arguments, `None` for `sys.argv[1:]`.
      description: the contender's one-line description.
      epochs: the default number of epochs.

    Returns:
      The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--source", choices=("idx", "sample"), default="idx")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="training subset size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.source == "idx" and not args.data_dir:
        parser.error("--data-dir (or FNLEARN_DATA_DIR) is required unless --source sample")
    return args


def report(**result: object) -> None:
    """Print the single `BENCH_RESULT {json}` line the benchmark harness reads.

    Args:
      **result: `first_epoch_s`, `fit_s`, `test_accuracy`, `framework_version` and any extras.
    """
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def missing(framework: str) -> None:
    """Report a framework that cannot be imported and exit with status 3.

    Args:
      framework: the name the harness shows in the "missing" row.
    """
    print(f"BENCH_MISSING {framework}", flush=True)
    sys.exit(3)

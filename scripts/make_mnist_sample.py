"""Cut the MNIST sample shipped in fnlearn/assets/ from the official IDX files.

    PYTHONPATH=. python scripts/make_mnist_sample.py ../shared/data/mnist

The sample is the first 6000 training and the first 1000 test images of the official files (whose
sha256 `load_mnist` checks), written as gzipped IDX files. Gzip's timestamp is fixed, so the same
input always gives the same bytes.
"""

import argparse
import gzip
import hashlib
from pathlib import Path

import numpy as np

from fnlearn.data import (
    ASSETS_DIR,
    FILE_NAMES,
    IMAGE_MAGIC,
    LABEL_MAGIC,
    MNIST_SAMPLE_PREFIX,
    MNIST_SHA256,
    load_mnist,
)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file: magic, big-endian dimensions, then the bytes."""
    magic = IMAGE_MAGIC if array.ndim == 3 else LABEL_MAGIC
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_dir", type=Path, help="folder of the four official MNIST IDX files")
    parser.add_argument("--out-dir", type=Path, default=ASSETS_DIR)
    parser.add_argument("--train", type=int, default=6000, help="number of training images")
    parser.add_argument("--test", type=int, default=1000, help="number of test images")
    args = parser.parse_args()

    # verify=True refuses any file whose uncompressed sha256 is not the official one.
    (x_train, y_train), (x_test, y_test) = load_mnist("idx", args.source_dir, verify=True)
    for name, digest in MNIST_SHA256.items():
        print(f"verified {name} sha256 {digest}")
    arrays = {
        "train_images": x_train[: args.train],
        "train_labels": y_train[: args.train],
        "test_images": x_test[: args.test],
        "test_labels": y_test[: args.test],
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for key, name in FILE_NAMES.items():
        data = gzip.compress(idx_bytes(arrays[key]), compresslevel=9, mtime=0)
        path = args.out_dir / f"{MNIST_SAMPLE_PREFIX}{name}.gz"
        path.write_bytes(data)
        total += len(data)
        print(f"wrote {path} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
    for split, labels in (("train", arrays["train_labels"]), ("test", arrays["test_labels"])):
        print(f"{split}: {len(labels)} images, per class {np.bincount(labels, minlength=10)}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()

"""Data: the datasets, the IDX format, verified downloads, and sources ``fit`` streams from.

- ``datasets``: ``load_mnist``, ``load_fashion_mnist`` (IDX folder, tensorflow-datasets,
  a verified download or the shipped sample), ``Dataset``, ``Split``.
- ``idx``: reading and checking IDX files. ``download``: mirrors into an atomic cache.
- ``official``: the official files' sha256 digests and the mirrors that serve them.
- ``sources``: random-access sources (arrays, memmaps, grain, tfds) for ``fit`` to stream.

A new dataset goes in ``datasets`` (a ``_Spec`` with its file names, digests and mirrors).
"""

from fnlearn.data import download, idx, official, sources
from fnlearn.data.datasets import (
    ASSETS_DIR,
    DATA_DIR_ENV,
    IMAGE_SHAPE,
    MNIST_SAMPLE_PREFIX,
    NUM_CLASSES,
    SOURCES,
    Dataset,
    Split,
    load_fashion_mnist,
    load_mnist,
)
from fnlearn.data.idx import FILE_NAMES, DataError, read_idx
from fnlearn.data.official import (
    FASHION_MNIST_ARCHIVE_SHA256,
    FASHION_MNIST_MIRRORS,
    FASHION_MNIST_SHA256,
    MNIST_ARCHIVE_SHA256,
    MNIST_MIRRORS,
    MNIST_SHA256,
)

__all__ = [
    "ASSETS_DIR", "DATA_DIR_ENV", "FASHION_MNIST_ARCHIVE_SHA256", "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SHA256", "FILE_NAMES", "IMAGE_SHAPE", "MNIST_ARCHIVE_SHA256", "MNIST_MIRRORS",
    "MNIST_SAMPLE_PREFIX", "MNIST_SHA256", "NUM_CLASSES", "SOURCES", "DataError", "Dataset",
    "Split", "download", "idx", "load_fashion_mnist", "load_mnist", "official", "read_idx",
    "sources",
]

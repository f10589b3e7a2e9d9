"""MNIST and Fashion-MNIST as NumPy arrays: IDX files, tensorflow-datasets, a download or a sample.

    (x_train, y_train), (x_test, y_test) = load_mnist()

Images are uint8 arrays of shape (N, 28, 28) (float32 in [0, 1] with ``normalize=True``),
labels int32 arrays of shape (N,) with values 0..9. Every source goes through the same checks,
and anything wrong raises `DataError` naming the file or folder; nothing half-loaded is returned.
See docs/data.md for how ``source="auto"`` chooses.
"""

import importlib.util
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fnlearn.data import download
from fnlearn.data.idx import (
    FILE_NAMES,
    IMAGE_MAGIC,
    LABEL_MAGIC,
    DataError,
    check_official,
    decompress,
    find_idx_file,
    parse_idx,
    read_file,
    read_idx,
)
from fnlearn.data.official import (
    FASHION_MNIST_ARCHIVE_SHA256,
    FASHION_MNIST_MIRRORS,
    FASHION_MNIST_SHA256,
    MNIST_ARCHIVE_SHA256,
    MNIST_MIRRORS,
    MNIST_SHA256,
)

__all__ = ["DataError", "Dataset", "Split", "load_fashion_mnist", "load_mnist", "read_idx"]

#: The environment variable naming the default IDX folder of ``load_mnist``.
DATA_DIR_ENV = "FNLEARN_DATA_DIR"
#: The values of ``load_mnist``'s ``source`` argument.
SOURCES = ("auto", "idx", "tfds", "download", "sample")

#: Classes of MNIST and Fashion-MNIST (labels 0 to 9).
NUM_CLASSES = 10
#: The shape of one image: 28 by 28 pixels, no channel axis.
IMAGE_SHAPE = (28, 28)

#: The folder of files shipped inside the package (the MNIST sample).
ASSETS_DIR = Path(__file__).parent.parent / "assets"
#: The shipped sample is four gzipped IDX files named "<prefix><standard name>.gz" in
#: ``ASSETS_DIR``.
MNIST_SAMPLE_PREFIX = "mnist-sample-"


class Split(NamedTuple):
    """One split: images (N, 28, 28) and labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


class Dataset(tuple):
    """``(train, test)`` splits that also record which source they came from.

    It is a plain 2-tuple, so ``(x_train, y_train), (x_test, y_test) = load_mnist()`` works as with
    Keras; ``.train``, ``.test`` and ``.source`` ("idx", "tfds" or "sample") name the parts. (A
    three-field NamedTuple would not unpack into two.)
    """

    source: str

    def __new__(cls, train: Split, test: Split, source: str) -> "Dataset":
        self = super().__new__(cls, (train, test))
        self.source = source
        return self

    def __getnewargs__(self) -> tuple[Split, Split, str]:
        return (self[0], self[1], self.source)

    @property
    def train(self) -> Split:
        return self[0]

    @property
    def test(self) -> Split:
        return self[1]

    def __repr__(self) -> str:
        def describe(split: Split) -> str:
            return f"{split.images.dtype}{list(split.images.shape)}"

        return (
            f"Dataset(train={describe(self[0])}, test={describe(self[1])}, source={self.source!r})"
        )


class _Spec(NamedTuple):
    """What differs between the datasets this module knows."""

    title: str
    name: str  # tensorflow-datasets' name; also the cache subfolder
    mirrors: tuple[str, ...]
    sha256: dict[str, str]  # of the uncompressed official files; empty when not known
    archive_sha256: dict[str, str]  # of the official .gz files
    sample_prefix: str | None  # of the shipped sample's files; None when none is shipped


_MNIST = _Spec(
    "MNIST", "mnist", MNIST_MIRRORS, MNIST_SHA256, MNIST_ARCHIVE_SHA256, MNIST_SAMPLE_PREFIX
)
_FASHION_MNIST = _Spec(
    "Fashion-MNIST", "fashion_mnist", FASHION_MNIST_MIRRORS, FASHION_MNIST_SHA256,
    FASHION_MNIST_ARCHIVE_SHA256, None
)


def load_mnist(
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    normalize: bool = False,
    *,
    verify: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load MNIST as ``((x_train, y_train), (x_test, y_test))`` NumPy arrays.

    Args:
      source: "idx" (a folder of the four IDX files), "tfds" (tensorflow-datasets), "download"
        (the IDX files from a public mirror, kept in a cache folder), "sample" (the 6000/1000-image
        sample shipped with fnlearn) or "auto": IDX if a folder is given, else a prepared tfds
        copy, else the download, else the sample with a one-line notice on stderr.
      data_dir: for "idx" and "auto", the IDX folder (default: $FNLEARN_DATA_DIR); for "tfds", the
        tfds data dir (default: tfds' own, ~/tensorflow_datasets or $TFDS_DATA_DIR).
      normalize: return float32 images ``(images / 255.0).astype(np.float32)`` instead of uint8.
      verify: check the sha256 of each file's uncompressed bytes against the official files
        (whatever gzip wraps them), for an IDX folder and for downloads alike; False loads a
        copy of your own with the structural checks only.
      cache_dir: for downloads, the cache folder (default: $FNLEARN_DATA_CACHE, else
        ~/.cache/fnlearn); the files go in its "mnist" subfolder.

    Returns:
      A `Dataset`: train and test `Split`s of uint8 (N, 28, 28) images (float32 if normalize)
      and int32 (N,) labels, with ``.source`` naming the source used.

    Raises:
      DataError: a file is missing or corrupt, or no source has the data.
    """
    return _load(_MNIST, source, data_dir, normalize, verify, cache_dir)


def load_fashion_mnist(
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    normalize: bool = False,
    *,
    verify: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load Fashion-MNIST as ``((x_train, y_train), (x_test, y_test))`` NumPy arrays.

    Same as `load_mnist`, except that no sample is shipped (so "auto" raises `DataError` when no
    other source has the data).

    Args:
      source: "idx", "tfds", "download" or "auto" (see `load_mnist`).
      data_dir: the IDX folder (default: $FNLEARN_DATA_DIR) or, for "tfds", the tfds data dir.
      normalize: return float32 images ``(images / 255.0).astype(np.float32)`` instead of uint8.
      verify: as for `load_mnist`: the uncompressed bytes against the official files', so a
        re-compressed copy (Debian's ``dataset-fashion-mnist``) passes.
      cache_dir: as for `load_mnist`; the files go in its "fashion_mnist" subfolder.

    Returns:
      A `Dataset`, as for `load_mnist`.

    Raises:
      DataError: a file is missing or corrupt, or no source has the data.
    """
    return _load(_FASHION_MNIST, source, data_dir, normalize, verify, cache_dir)


def _load(
    spec: _Spec,
    source: str,
    data_dir: str | os.PathLike | None,
    normalize: bool,
    verify: bool,
    cache_dir: str | os.PathLike | None,
) -> Dataset:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source in ("sample", "download") and data_dir is not None:
        raise ValueError(f"data_dir has no meaning for source={source!r}")
    if source == "auto":
        dataset = _load_auto(spec, data_dir, verify, cache_dir)
    elif source == "idx":
        dataset = Dataset(*_load_idx_folder(spec, _idx_folder(data_dir), verify), "idx")
    elif source == "tfds":
        dataset = Dataset(*_load_tfds(spec, data_dir, download=True), "tfds")
    elif source == "download":
        try:
            dataset = Dataset(*_load_download(spec, cache_dir, verify), "download")
        except download.DownloadError as error:
            raise DataError(f"{spec.title}: {error}") from error
    else:
        dataset = Dataset(*_load_sample(spec), "sample")
    if not normalize:
        return dataset
    # Divide in float64 and round once to float32, as the original program does; multiplying by
    # 1/255 gives different bits for about half of the 256 pixel values. A uint8 image has only
    # 256 values, so look them up: the same bits as dividing every pixel, ten times faster.
    table = (np.arange(256) / 255.0).astype(np.float32)
    train, test = (Split(table[s.images], s.labels) for s in dataset)
    return Dataset(train, test, dataset.source)


def _load_auto(
    spec: _Spec,
    data_dir: str | os.PathLike | None,
    verify: bool,
    cache_dir: str | os.PathLike | None,
) -> Dataset:
    folder = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if folder:
        # A folder the user named is never silently replaced by another source.
        return Dataset(*_load_idx_folder(spec, Path(folder), verify), "idx")
    if _tfds_has_cached(spec):
        return Dataset(*_load_tfds(spec, None, download=False), "tfds")
    try:
        # A corrupt download raises DataError: only being offline falls through to the sample.
        return Dataset(*_load_download(spec, cache_dir, verify), "download")
    except download.DownloadError as error:
        why_not = str(error)
    hint = (
        f"set {DATA_DIR_ENV} to a folder of the four IDX files, or {download.MIRROR_ENV} to a "
        "mirror that serves them"
    )
    if spec.sample_prefix is None:
        raise DataError(f"no {spec.title} data found ({why_not}); {hint}")
    train, test = _load_sample(spec)
    notice = (
        f"fnlearn: using the {spec.title} sample shipped with fnlearn ({len(train.labels)} train, "
        f"{len(test.labels)} test images), not the full dataset ({why_not}); for the full data, "
        f"{hint}"
    )
    print(" ".join(notice.split()), file=sys.stderr)
    return Dataset(train, test, "sample")


def _load_download(
    spec: _Spec, cache_dir: str | os.PathLike | None, verify: bool = True
) -> tuple[Split, Split]:
    """Read the dataset from the cache, downloading the files it lacks first.

    With ``verify=False`` a download is only checked to be gzip and, once cached, the IDX
    structure: for a mirror serving a copy of your own.
    """

    def check(url: str, raw: bytes) -> None:
        data = decompress(raw, url)
        if verify:
            name = url.rsplit("/", 1)[-1].removesuffix(".gz")
            check_official(url, raw, data, spec.sha256.get(name), spec.archive_sha256.get(name),
                           f"{spec.title} {name}.gz")

    folder = download.cache_folder(cache_dir) / spec.name
    names = [f"{name}.gz" for name in FILE_NAMES.values()]
    try:
        download.fetch(names, download.mirrors_for(spec.name, spec.mirrors), folder, check)
    except DataError as error:
        raise DataError(f"{error}. Pass verify=False to load it anyway") from None
    return _load_idx_folder(spec, folder, verify)


def _idx_folder(data_dir: str | os.PathLike | None) -> Path:
    folder = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not folder:
        raise DataError(f"source='idx' needs data_dir= or the {DATA_DIR_ENV} environment variable")
    return Path(folder)


def _load_idx_folder(
    spec: _Spec, folder: Path, verify: bool, prefix: str = ""
) -> tuple[Split, Split]:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected the four {spec.title} IDX files)")
    paths = {key: find_idx_file(folder, prefix + name) for key, name in FILE_NAMES.items()}
    arrays = {}
    for key, path in paths.items():
        raw, data = read_file(path)
        name = FILE_NAMES[key]
        if verify and not prefix:
            archive_sha256 = spec.archive_sha256.get(name) if path.suffix == ".gz" else None
            try:
                check_official(path, raw, data, spec.sha256.get(name), archive_sha256,
                               f"{spec.title} {name}")
            except DataError as error:
                raise DataError(f"{error}. Pass verify=False to load it anyway") from None
        arrays[key] = parse_idx(data, path, IMAGE_MAGIC if "images" in key else LABEL_MAGIC)
    return tuple(
        _checked_split(
            arrays[f"{split}_images"],
            arrays[f"{split}_labels"],
            split,
            paths[f"{split}_images"],
            paths[f"{split}_labels"],
        )
        for split in ("train", "test")
    )


def _checked_split(
    images: np.ndarray, labels: np.ndarray, name: str, images_from: object, labels_from: object
) -> Split:
    """Check one split's shapes, dtypes and label range, and return it as uint8 and int32.

    Args:
      images: uint8 (N, 28, 28) or (N, 28, 28, 1).
      labels: integers (N,).
      name: "train" or "test", for messages.
      images_from: where the images came from (a path), for messages.
      labels_from: where the labels came from, for messages.

    Returns:
      The checked `Split`.
    """
    if images.ndim == 4 and images.shape[-1] == 1:  # tfds keeps a channel axis
        images = images[..., 0]
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{images_from}: {name} images are {images.dtype} {images.shape}, expected uint8 "
            f"(N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]})"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_from}: labels of shape {labels.shape}, but {images_from} has "
            f"{len(images)} images"
        )
    if len(labels) == 0:
        raise DataError(f"{images_from}: the {name} split is empty")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        bad = labels[(labels < 0) | (labels >= NUM_CLASSES)][0]
        raise DataError(f"{labels_from}: {name} label {bad} is outside 0..{NUM_CLASSES - 1}")
    # Copies, so callers get writable arrays that own their memory, as from Keras.
    return Split(np.array(images, order="C"), labels.astype(np.int32))


def _load_sample(spec: _Spec) -> tuple[Split, Split]:
    if spec.sample_prefix is None:
        raise DataError(f"fnlearn ships no {spec.title} sample; use source='idx' or 'tfds'")
    return _load_idx_folder(spec, ASSETS_DIR, verify=False, prefix=spec.sample_prefix)


def _tfds_has_cached(spec: _Spec) -> bool:
    """Whether tensorflow-datasets is installed and has the dataset prepared in its data dir."""
    if importlib.util.find_spec("tensorflow_datasets") is None:
        return False
    # Look for the dataset's folder first: importing tfds takes seconds, and asking its
    # builder about a dataset it never prepared logs a warning.
    data_dir = Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")
    if not (data_dir / spec.name).is_dir():
        return False
    import tensorflow_datasets as tfds

    return tfds.builder(spec.name).is_prepared()


def _load_tfds(
    spec: _Spec, data_dir: str | os.PathLike | None, download: bool
) -> tuple[Split, Split]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(
            "source='tfds' needs tensorflow-datasets: pip install tensorflow-datasets"
        ) from error
    has_tensorflow = tensorflow_available()
    builder = tfds.builder(spec.name, data_dir=data_dir)
    where = f"tensorflow-datasets' {spec.name} in {builder.data_dir}"
    if not builder.is_prepared():
        if not download:
            raise DataError(f"{where}: not downloaded and prepared")
        if not has_tensorflow:
            raise DataError(
                f"{where}: not prepared yet, and tensorflow-datasets needs TensorFlow to prepare "
                f"it (pip install tensorflow-cpu), or set {DATA_DIR_ENV} to a folder of the IDX "
                "files"
            )
        try:
            builder.download_and_prepare()
        except Exception as error:  # tfds raises many kinds; all mean "no data"
            missing = f"; pip install {error.name}" if isinstance(error, ImportError) else ""
            raise DataError(
                f"{where}: download or preparation failed ({error}{missing})"
            ) from error
    # ArrayRecord files (what tfds.data_source prepares) are read by random access, without
    # TensorFlow; tfds' default TFRecord files only through tf.data.
    if builder.info.file_format.value == "array_record" or not has_tensorflow:
        read_split = read_tfds_data_source
    else:
        read_split = read_tfds_dataset
    try:
        arrays = {split: read_split(builder, split) for split in ("train", "test")}
    except Exception as error:  # from tfds, TF or array_record
        tip = "" if has_tensorflow else " (without TensorFlow only ArrayRecord files can be read)"
        raise DataError(f"{where}: cannot be read{tip} ({error})") from error
    return tuple(_checked_split(*arrays[split], split, where, where) for split in arrays)


def tensorflow_available() -> bool:
    """Whether TensorFlow is installed (tfds needs it to prepare a dataset, not to read one)."""
    return importlib.util.find_spec("tensorflow") is not None


def read_tfds_dataset(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a prepared tfds split, read by ``tf.data`` (needs TensorFlow)."""
    import tensorflow_datasets as tfds

    # Fixed-size batches rather than batch_size=-1: the latter also breaks under tfds' mock_data.
    batches = list(
        tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000, as_supervised=True))
    )
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def read_tfds_data_source(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a prepared tfds split, read as a random-access data source."""
    source = builder.as_data_source(split=split)
    examples = [source[i] for i in range(len(source))]
    images = np.stack([example["image"] for example in examples])
    return images, np.array([example["label"] for example in examples])

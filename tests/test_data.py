"""Tests for fnlearn.data: IDX reading and its errors, the tfds adapter, the sample, full MNIST."""

import gzip
import hashlib
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from fnlearn import data
from fnlearn.data import datasets

IMAGES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABELS = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}


def idx(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX bytes of a uint8 array: magic, big-endian dimensions, pixels."""
    magic = magic if magic is not None else (2051 if array.ndim == 3 else 2049)
    return np.array([magic, *array.shape], ">u4").tobytes() + array.astype(np.uint8).tobytes()


def small_mnist(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(12, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "test_labels": np.array([7, 2, 1, 0, 4], np.uint8),
    }


def write_folder(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> Path:
    """Write the four IDX files (gzipped if gz) into folder and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in data.FILE_NAMES.items():
        raw = idx(arrays[key])
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No FNLEARN_DATA_DIR, an empty tfds data dir, and no download mirror (see conftest.py)."""
    import tensorflow_datasets as tfds

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_round_trip(tmp_path, gz):
    arrays = small_mnist()
    folder = write_folder(tmp_path, arrays, gz)
    (x_train, y_train), (x_test, y_test) = data.load_mnist("idx", folder, verify=False)
    np.testing.assert_array_equal(x_train, arrays["train_images"])
    np.testing.assert_array_equal(y_train, arrays["train_labels"])
    np.testing.assert_array_equal(x_test, arrays["test_images"])
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int32
    assert x_train.flags.writeable


def test_read_idx_returns_the_header_shape(tmp_path):
    path = tmp_path / "images.gz"
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path.write_bytes(gzip.compress(idx(array)))
    np.testing.assert_array_equal(data.read_idx(path), array)


def test_fashion_mnist_reads_the_same_file_names(tmp_path):
    arrays = small_mnist(seed=1)
    dataset = data.load_fashion_mnist("idx", write_folder(tmp_path, arrays, gz=True), verify=False)
    np.testing.assert_array_equal(dataset.train.images, arrays["train_images"])
    assert dataset.source == "idx"


def test_env_var_names_the_folder_for_idx_and_auto(tmp_path, monkeypatch):
    arrays = small_mnist()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(write_folder(tmp_path, arrays, gz=False)))
    for source in ("idx", "auto"):
        dataset = data.load_mnist(source, verify=False)
        assert dataset.source == "idx"
        np.testing.assert_array_equal(dataset.test.labels, arrays["test_labels"])


def test_idx_without_a_folder_says_how_to_name_one(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(data.DataError, match=data.DATA_DIR_ENV):
        data.load_mnist("idx")


def test_verify_rejects_files_that_are_not_the_official_mnist(tmp_path):
    folder = write_folder(tmp_path, small_mnist(), gz=True)
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte\.gz: sha256"):
        data.load_mnist("idx", folder)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_fashion_mnist_verify_checks_the_contents_against_the_official_files(tmp_path, gz):
    arrays = small_mnist()
    folder = write_folder(tmp_path, arrays, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    with pytest.raises(data.DataError, match=rf"{name}: sha256 is not the official Fashion-MNIST "
                                             r"train-images-idx3-ubyte's \(c59f468a.* for the "
                                             r"uncompressed data.*\): its contents differ from the "
                                             r"official files. Pass verify=False to load it "
                                             r"anyway") as error:
        data.load_fashion_mnist("idx", folder)
    assert "corrupt" not in str(error.value)
    loaded = data.load_fashion_mnist("idx", folder, verify=False)
    np.testing.assert_array_equal(loaded.test.labels, arrays["test_labels"])


def test_debian_fashion_mnist_is_the_official_archives_renamed(full_fashion_mnist):
    """How FASHION_MNIST_SHA256 was established offline, replayed.

    Debian's packaging dropped each file's name (and timestamp) from its gzip header; put
    back, they give the archives tensorflow-datasets registers, byte for byte, so the
    contents are the official files' and their digests the ones fnlearn records.
    """
    timestamps = {"train": 1504176606, "t10k": 1504176627}
    for name, contents_digest in data.FASHION_MNIST_SHA256.items():
        packaged = (full_fashion_mnist / f"{name}.gz").read_bytes()
        assert packaged[3] == 0  # no FNAME flag, no name
        official = (packaged[:3] + b"\x08" + timestamps[name.split("-")[0]].to_bytes(4, "little")
                    + packaged[8:10] + name.encode() + b"\0" + packaged[10:])
        assert len(official) == len(packaged) + len(name) + 1
        assert hashlib.sha256(official).hexdigest() == data.FASHION_MNIST_ARCHIVE_SHA256[name]
        assert hashlib.sha256(gzip.decompress(official)).hexdigest() == contents_digest


def test_a_local_fashion_mnist_copy_loads_verified(full_fashion_mnist):
    # Before: refused as "corrupt or another dataset" unless verify=False.
    (x_train, y_train), (x_test, y_test) = data.load_fashion_mnist("idx", full_fashion_mnist)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10


def corrupt_bad_magic(folder, arrays):
    (folder / IMAGES["train"]).write_bytes(idx(arrays["train_images"], magic=2049))
    return IMAGES["train"], "magic number 2049, expected 2051"


def corrupt_labels_magic(folder, arrays):
    (folder / LABELS["test"]).write_bytes(idx(arrays["test_labels"], magic=2051))
    return LABELS["test"], "magic number 2051"


def corrupt_truncated(folder, arrays):
    path = folder / IMAGES["test"]
    path.write_bytes(path.read_bytes()[:-100])
    return IMAGES["test"], "truncated"


def corrupt_short_header(folder, arrays):
    (folder / LABELS["train"]).write_bytes(b"\x00\x00\x08\x01\x00")
    return LABELS["train"], "too short"


def corrupt_trailing_bytes(folder, arrays):
    path = folder / LABELS["train"]
    path.write_bytes(path.read_bytes() + b"\x00")
    return LABELS["train"], "trailing bytes"


def corrupt_count_mismatch(folder, arrays):
    (folder / LABELS["train"]).write_bytes(idx(arrays["train_labels"][:-1]))
    return LABELS["train"], "has 12 images"


def corrupt_label_10(folder, arrays):
    labels = arrays["test_labels"].copy()
    labels[3] = 10
    (folder / LABELS["test"]).write_bytes(idx(labels))
    return LABELS["test"], "label 10 is outside 0..9"


def corrupt_bad_gzip(folder, arrays):
    path = folder / IMAGES["train"]
    path.unlink()
    (folder / f"{IMAGES['train']}.gz").write_bytes(b"this is not gzip data")
    return f"{IMAGES['train']}.gz", "not a valid gzip file"


def corrupt_truncated_gzip(folder, arrays):
    path = folder / IMAGES["train"]
    compressed = gzip.compress(path.read_bytes())
    path.unlink()
    (folder / f"{IMAGES['train']}.gz").write_bytes(compressed[: len(compressed) // 2])
    return f"{IMAGES['train']}.gz", "not a valid gzip file"


def corrupt_missing(folder, arrays):
    (folder / LABELS["test"]).unlink()
    return LABELS["test"], "missing"


@pytest.mark.parametrize(
    "corrupt",
    [
        corrupt_bad_magic,
        corrupt_labels_magic,
        corrupt_truncated,
        corrupt_short_header,
        corrupt_trailing_bytes,
        corrupt_count_mismatch,
        corrupt_label_10,
        corrupt_bad_gzip,
        corrupt_truncated_gzip,
        corrupt_missing,
    ],
)
def test_corrupt_files_raise_data_error_naming_the_file(tmp_path, corrupt):
    arrays = small_mnist()
    folder = write_folder(tmp_path, arrays, gz=False)
    file_name, problem = corrupt(folder, arrays)
    with pytest.raises(data.DataError, match=problem) as error:
        data.load_mnist("idx", folder, verify=False)
    assert str(folder / file_name) in str(error.value)
    assert isinstance(error.value, ValueError)


def test_sample_has_the_documented_shapes_and_all_classes():
    dataset = data.load_mnist("sample")
    (x_train, y_train), (x_test, y_test) = dataset
    assert dataset.source == "sample"
    assert x_train.shape == (6000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert x_train.dtype == np.uint8 and x_test.dtype == np.uint8
    assert y_train.shape == (6000,) and y_test.shape == (1000,)
    assert y_train.dtype == np.int32 and y_test.dtype == np.int32
    assert set(y_train.tolist()) == set(range(10)) == set(y_test.tolist())
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9] and y_test[:5].tolist() == [7, 2, 1, 0, 4]
    sample_files = list(data.ASSETS_DIR.glob(f"{data.MNIST_SAMPLE_PREFIX}*"))
    assert len(sample_files) == 4 and sum(p.stat().st_size for p in sample_files) < 2_000_000


def test_normalize_is_division_by_255_in_float64_rounded_to_float32():
    (x_train, _), (x_test, _) = data.load_mnist("sample")
    (n_train, _), (n_test, _) = data.load_mnist("sample", normalize=True)
    assert n_train.dtype == np.float32
    for raw, normalized in ((x_train, n_train), (x_test, n_test)):
        expected = (raw / 255.0).astype(np.float32)
        np.testing.assert_array_equal(normalized.view(np.uint32), expected.view(np.uint32))
    # The check above can tell the two: multiplying by 1/255 rounds differently.
    pixels = np.arange(256, dtype=np.uint8)
    by_division = (pixels / 255.0).astype(np.float32)
    by_reciprocal = pixels.astype(np.float32) * np.float32(1 / 255)
    assert np.count_nonzero(by_division != by_reciprocal) == 126


def test_dataset_unpacks_like_keras_pickles_and_reports_its_source():
    dataset = data.load_mnist("sample")
    (x_train, y_train), (x_test, y_test) = dataset
    assert dataset.train.images is x_train and dataset.test.labels is y_test
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.source == "sample" and len(copy) == 2
    np.testing.assert_array_equal(copy.train.labels, y_train)
    assert repr(dataset) == (
        "Dataset(train=uint8[6000, 28, 28], test=uint8[1000, 28, 28], source='sample')"
    )


def test_auto_offline_falls_back_to_the_sample_with_a_one_line_notice(offline, capsys):
    start = time.perf_counter()
    dataset = data.load_mnist()
    assert time.perf_counter() - start < 3
    assert dataset.source == "sample"
    assert len(dataset.train.labels) == 6000
    notice = capsys.readouterr().err
    assert notice.count("\n") == 1 and notice.endswith("\n")
    assert "sample" in notice and data.DATA_DIR_ENV in notice


def test_auto_offline_fashion_mnist_has_no_sample_to_fall_back_to(offline):
    with pytest.raises(data.DataError, match=data.DATA_DIR_ENV):
        data.load_fashion_mnist()
    with pytest.raises(data.DataError, match="no Fashion-MNIST sample"):
        data.load_fashion_mnist("sample")


@pytest.mark.parametrize("has_tensorflow", [True, False], ids=["as_dataset", "data_source"])
def test_tfds_adapter_on_mock_data(monkeypatch, tmp_path, has_tensorflow, need):
    import tensorflow_datasets as tfds

    need("tensorflow")  # mock_data builds its examples with TensorFlow
    monkeypatch.setattr(datasets, "tensorflow_available", lambda: has_tensorflow)
    if not has_tensorflow:
        # Without TensorFlow only an existing cache can be read, so pretend there is one (mock_data
        # reports datasets as not prepared, and its download_and_prepare is a no-op).
        monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    # mock_data serves both readers, so make sure the one that must not be used is not.
    unused = "read_tfds_dataset" if not has_tensorflow else "read_tfds_data_source"
    monkeypatch.setattr(datasets, unused, lambda *args: pytest.fail(f"{unused} was used"))
    with tfds.testing.mock_data(num_examples=7):
        dataset = data.load_mnist("tfds", tmp_path)
    (x_train, y_train), (x_test, y_test) = dataset
    assert dataset.source == "tfds"
    assert x_train.shape == (7, 28, 28) and x_test.shape == (7, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int32
    assert y_train.min() >= 0 and y_train.max() <= 9


def test_auto_uses_a_tfds_cache_before_the_sample(offline, monkeypatch, tmp_path, need):
    import tensorflow_datasets as tfds

    need("tensorflow")
    (tmp_path / "mnist").mkdir()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=3):
        dataset = data.load_mnist()
    assert dataset.source == "tfds" and dataset.train.images.shape == (3, 28, 28)


def test_tfds_without_tensorflow_says_preparing_needs_it(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "tensorflow_available", lambda: False)
    with pytest.raises(data.DataError, match="needs TensorFlow to prepare") as error:
        data.load_mnist("tfds", tmp_path)
    assert str(tmp_path) in str(error.value)


def test_full_mnist_loads_and_the_sample_is_its_head(full_mnist):
    (x_train, y_train), (x_test, y_test) = data.load_mnist("idx", full_mnist)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(y_train).tolist()[:2] == [5923, 6742]
    (s_train, s_labels), (s_test, _) = data.load_mnist("sample")
    np.testing.assert_array_equal(s_train, x_train[:6000])
    np.testing.assert_array_equal(s_labels, y_train[:6000])
    np.testing.assert_array_equal(s_test, x_test[:1000])

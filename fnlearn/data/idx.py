"""IDX files, the format of MNIST and Fashion-MNIST: reading, structural checks, hash checks.

An IDX file is a header (two zero bytes, a type code, the number of dimensions, one big-endian
uint32 per dimension) followed by the values. Every check here raises `DataError` naming the file.
"""

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

IMAGE_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions (count, rows, cols)
LABEL_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension (count)

#: The four standard IDX file names; MNIST and Fashion-MNIST use the same ones.
FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(ValueError):
    """A data file or source is missing, corrupt, or not what was asked for."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one unsigned-byte IDX file, raw or gzipped, checking its header against its length.

    Args:
      path: the file; a name ending in ".gz" is decompressed.

    Returns:
      A uint8 array with the dimensions from the header (e.g. (N, 28, 28) for images).

    Raises:
      DataError: the file is missing, is not valid gzip, has a bad magic number, or its length
        does not match its header.
    """
    _, data = read_file(Path(path))
    return parse_idx(data, Path(path))


def find_idx_file(folder: Path, name: str) -> Path:
    """Return ``folder/name`` or ``folder/name.gz``, the raw file first (it is cheaper to read).

    Raises:
      DataError: neither is there.
    """
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder / name}: missing (looked for {name} and {name}.gz in {folder})")


def read_file(path: Path) -> tuple[bytes, bytes]:
    """Return a file's bytes as stored and uncompressed (the same for a name not ending in .gz).

    Raises:
      DataError: the file is missing, unreadable, or not valid gzip.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise DataError(f"{path}: missing") from error
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error})") from error
    return raw, (decompress(raw, path) if path.suffix == ".gz" else raw)


def decompress(raw: bytes, path: object) -> bytes:
    """Gunzip ``raw``; ``path`` names it in the error.

    Raises:
      DataError: not a valid (or a truncated) gzip stream.
    """
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a valid gzip file ({error})") from error


def check_official(
    path: object,
    raw: bytes,
    data: bytes,
    sha256: str | None,
    archive_sha256: str | None,
    what: str,
) -> None:
    """Check a file against the official hashes: its uncompressed bytes or, if gzipped, the archive.

    The uncompressed hash accepts any gzip of the official data; the archive hash is for datasets
    whose uncompressed hashes are not recorded. A file with neither hash known passes.

    Args:
      path: where the file came from (a path or URL), for the message.
      raw: the bytes as stored or downloaded.
      data: the uncompressed bytes (``raw`` itself for an uncompressed file).
      sha256: of the official uncompressed file, or None if not known.
      archive_sha256: of the official .gz file, or None if not known or the file is not gzipped.
      what: the official file's description for the message, e.g. "MNIST train-images-idx3-ubyte".

    Raises:
      DataError: a known hash does not match.
    """
    if sha256 is None and archive_sha256 is None:
        return
    if archive_sha256 is not None and hashlib.sha256(raw).hexdigest() == archive_sha256:
        return
    if sha256 is not None and hashlib.sha256(data).hexdigest() == sha256:
        return
    expected = " or ".join(
        f"{hash_} for the {kind}"
        for hash_, kind in ((sha256, "uncompressed data"), (archive_sha256, "official .gz"))
        if hash_ is not None
    )
    # Only the content is judged: any gzip of the official bytes passes when their digest is
    # known, so what fails here holds other bytes (a damaged or edited copy, or other data).
    raise DataError(
        f"{path}: sha256 is not the official {what}'s ({expected}): its contents differ from "
        "the official files"
    )


def parse_idx(data: bytes, path: object, expected_magic: int | None = None) -> np.ndarray:
    """Parse uncompressed IDX bytes into a uint8 array, checking the header against the length.

    Args:
      data: the file's uncompressed bytes.
      path: where they came from, for messages.
      expected_magic: `IMAGE_MAGIC` or `LABEL_MAGIC` to insist on, or None for any unsigned-byte
        IDX file.

    Returns:
      A read-only uint8 view of ``data`` with the header's shape.

    Raises:
      DataError: bad magic number, short header, or a length that does not match the header.
    """
    # The magic numbers 2051 and 2049 are 0x0803 and 0x0801: type code 0x08 (unsigned byte), then
    # the number of dimensions.
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    ndim = data[3]
    if data[:3] != b"\x00\x00\x08" or ndim == 0:
        raise DataError(
            f"{path}: magic number {magic}, expected an unsigned-byte IDX file "
            f"({IMAGE_MAGIC} for images, {LABEL_MAGIC} for labels)"
        )
    if expected_magic is not None and magic != expected_magic:
        kind = "images" if expected_magic == IMAGE_MAGIC else "labels"
        raise DataError(f"{path}: magic number {magic}, expected {expected_magic} for {kind}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{path}: {len(data)} bytes, too short for a {ndim}-dimension IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected_size = header_size + int(np.prod(shape))
    if len(data) != expected_size:
        what = "truncated" if len(data) < expected_size else "has trailing bytes"
        raise DataError(
            f"{path}: {what}: {len(data)} bytes, but a header of shape {shape} means "
            f"{expected_size}"
        )
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)

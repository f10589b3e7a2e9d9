"""Random-access data sources for ``fit``: adapters, host batch reads and the block prefetcher.

A source is anything with ``__len__`` and ``__getitem__`` whose item ``i`` is an
``(input, label)`` pair: ``ArraySource`` over two NumPy arrays or memmaps, a grain
``MapDataset`` (or ``RandomAccessDataSource``) of pairs, a tfds ``data_source``
(items are dicts: ``stream(..., keys=...)`` names the two keys).
``fit(model, source, None, ...)`` trains from it (``fnlearn/loop/stream.py``): the
epoch's order is the same permutation in-memory training draws from the seed and
the epoch, and the host reads the examples of the next ``steps_per_call`` batches
in a background thread while the device runs the current ones in one compiled call.

Only what a process needs is read: ``read_examples`` touches only the positions
it is given, and ``blocks`` asks each process for the columns (the slice of every
global batch) that its devices hold.
"""

from __future__ import annotations

import math
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["STEPS_PER_CALL", "ArraySource", "KeyedSource", "Stream", "background", "blocks",
           "chunks", "read_block", "read_examples", "stream", "tfds_source"]

#: Batches one compiled call runs when streaming: enough that the call's fixed
#: cost is small next to its work, few enough that a block of examples stays small.
STEPS_PER_CALL = 100


def _file_rows(array) -> tuple[str, int, int] | None:
    """``(path, byte offset of row 0, bytes per row)`` of a memmap whose rows lie whole in its file.

    None for anything else (an in-memory array, a view with strided rows).
    """
    if not isinstance(array, np.memmap) or array.ndim == 0:
        return None
    root = array
    while isinstance(root.base, np.memmap):
        root = root.base
    row_bytes = array.dtype.itemsize * math.prod(array.shape[1:])
    if (not isinstance(root.base, mmap.mmap) or root.filename is None
            or array.strides[0] != row_bytes or not array[:1].flags.c_contiguous):
        return None
    return root.filename, root.offset + array.ctypes.data - root.ctypes.data, row_bytes


def _pread_rows(file_rows: tuple[str, int, int], array, positions: np.ndarray) -> np.ndarray:
    """Rows ``positions`` of a memmapped array, read with ``pread`` rather than through the map.

    Pages touched through a map count as the process's resident memory, and the
    kernel maps large neighbourhoods of every touched row, so random reads over a
    big file would make the process as large as the file; reads keep them in the
    page cache only.
    """
    path, offset, row_bytes = file_rows
    out = np.empty((len(positions), *array.shape[1:]), array.dtype)
    rows = out.reshape(len(positions), row_bytes // array.dtype.itemsize).view(np.uint8)
    with open(path, "rb", buffering=0) as file:
        descriptor = file.fileno()
        for row, position in zip(rows, positions.tolist()):
            if os.preadv(descriptor, [row], offset + position * row_bytes) != row_bytes:
                raise OSError(f"{path} ended before row {position}")
    return out


class ArraySource:
    """A source over inputs ``x`` and labels ``y`` (NumPy arrays or memmaps); reads lazily.

    A memmap (``np.load(path, mmap_mode="r")``) is read row by row with ``pread``,
    so the process's resident memory does not grow with the file (``_pread_rows``).

    Args:
      x, y: arrays with the examples on the leading axis, e.g. ``np.load(path, mmap_mode="r")``.
    """

    def __init__(self, x, y):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        self.x, self.y = x, y
        self._file_rows = (_file_rows(x), _file_rows(y))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.x[i]), np.asarray(self.y[i])

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The examples at ``positions`` as two stacked arrays (one fancy-index read each)."""
        return tuple(np.asarray(a[positions]) if rows is None else _pread_rows(rows, a, positions)
                     for a, rows in zip((self.x, self.y), self._file_rows))


class KeyedSource:
    """A source whose items are dicts (tfds ``data_source``), seen as ``(input, label)`` pairs.

    Args:
      source: random access, item ``i`` a dict.
      keys: the ``(input_key, label_key)`` to read from each item.
    """

    def __init__(self, source, keys: tuple[str, str] = ("image", "label")):
        if not (isinstance(keys, tuple | list) and len(keys) == 2):
            raise ValueError(f"keys must be a pair (input_key, label_key), got {keys!r}")
        self.source, self.keys = source, tuple(keys)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        item = self.source[int(i)]
        missing = [k for k in self.keys if k not in item]
        if missing:
            raise KeyError(f"source item {i} has no key {missing[0]!r}; its keys are "
                           f"{sorted(item)} (pass keys=(input_key, label_key))")
        return item[self.keys[0]], item[self.keys[1]]


@dataclass(frozen=True)
class Stream:
    """A source with how to stream it; what ``fit`` accepts in place of ``x``.

    Attributes:
      source: random access, item ``i`` an ``(input, label)`` pair.
      steps_per_call: batches per compiled call (the block the host assembles ahead).
      workers: threads reading items of a source without a batched ``read``.
      prefetch: blocks assembled ahead of the one the device runs.
    """

    source: Any
    steps_per_call: int = STEPS_PER_CALL
    workers: int = 4
    prefetch: int = 2


def stream(source, *, keys: tuple[str, str] | None = None, steps_per_call: int = STEPS_PER_CALL,
           workers: int = 4, prefetch: int = 2) -> Stream:
    """Wraps a data source for ``fit``, with how many steps one compiled call runs.

    Args:
      source: a random-access source (see the module docstring); a ``Stream`` is
        returned as it is.
      keys: ``(input_key, label_key)`` when items are dicts (tfds); default
        ``("image", "label")`` for dict items.
      steps_per_call: batches per compiled call, e.g. 100-500.
      workers: reader threads for sources read item by item.
      prefetch: blocks read ahead (two: one being filled while one waits).

    Returns:
      A ``Stream`` to pass as ``fit``'s ``x`` (with ``y=None``).
    """
    if isinstance(source, Stream):
        return source
    for name, value in (("steps_per_call", steps_per_call), ("workers", workers),
                        ("prefetch", prefetch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return Stream(_adapt(source, keys), steps_per_call, workers, prefetch)


def _adapt(source, keys):
    if type(source).__name__ == "DataLoader" and hasattr(source, "_sampler"):
        raise TypeError(
            "x is a grain DataLoader, which samples, shards and batches by itself; fit does "
            "that (seeded shuffle, per-process shards, checkpointed position): pass its source "
            "instead, e.g. grain.MapDataset.source(data_source).map(transform)")
    if isinstance(source, np.ndarray) or hasattr(source, "__array__"):
        raise TypeError("x is an array but y is None: pass fit(model, x, y) for arrays, or "
                        "fnlearn.sources.ArraySource(x, y) as a source")
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise TypeError(f"x must be a random-access source (with __len__ and __getitem__) when "
                        f"y is None, got {type(source).__name__}")
    if len(source) == 0:
        raise ValueError("x is an empty source: nothing to train on")
    first = source[0]
    if isinstance(first, dict):
        return KeyedSource(source, keys or ("image", "label"))
    if keys is not None:
        raise ValueError(f"keys={keys!r} was given but the source's items are "
                         f"{type(first).__name__}, not dicts")
    if not (isinstance(first, tuple | list) and len(first) == 2):
        raise TypeError(f"item 0 of the source must be an (input, label) pair or a dict, got "
                        f"{type(first).__name__}")
    return source


def read_examples(source, positions: np.ndarray,
                  pool: ThreadPoolExecutor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The examples at ``positions``, stacked: ``source.read`` if it has one, else item by item.

    Args:
      source: a source (already adapted: items are pairs).
      positions: 1-D integer positions, read in this order.
      pool: threads to read items with (sources without ``read``).

    Returns:
      ``(inputs, labels)`` with ``len(positions)`` rows each.
    """
    positions = np.asarray(positions, np.int64)
    if positions.size == 0:
        # A process whose part of a block is all padding: only the shapes are needed.
        x, y = (np.asarray(v) for v in source[0])
        return np.zeros((0, *x.shape), x.dtype), np.zeros((0, *y.shape), y.dtype)
    if hasattr(source, "read"):
        return source.read(positions)
    mapper = map if pool is None else pool.map
    items = list(mapper(source.__getitem__, positions.tolist()))
    return (np.stack([np.asarray(a) for a, _ in items]),
            np.stack([np.asarray(b) for _, b in items]))


def chunks(steps: int, start: int, steps_per_call: int,
           stops: Iterable[int] = ()) -> list[tuple[int, int]]:
    """The ``(begin, end)`` rows of each call from row ``start`` of a ``steps``-row epoch.

    A call ends after ``steps_per_call`` rows, at the epoch's end, or at one of the
    ``stops`` (where the host looks: a checkpoint, a batch-level callback, the bar),
    whichever comes first.
    """
    stops = sorted(set(stops))
    out, begin = [], start
    while begin < steps:
        end = min([begin + steps_per_call, steps, *(s for s in stops if s > begin)])
        out.append((begin, end))
        begin = end
    return out


def read_block(source, index: np.ndarray, mask: np.ndarray, columns: slice, rows: int,
               pool: ThreadPoolExecutor | None = None) -> tuple[np.ndarray, ...]:
    """This process's part of one call's batches: ``(x, y, mask)`` of shape ``(rows, cols, ...)``.

    Reads only the real (masked-in) examples of ``index[:, columns]``; padding rows
    and the empty rows up to ``rows`` are zeros with a False mask.
    """
    index, mask = index[:, columns], mask[:, columns]
    wanted = mask.reshape(-1)
    xs, ys = read_examples(source, index.reshape(-1)[wanted], pool)
    width = index.shape[1]
    if len(mask) == rows and wanted.all():
        return (xs.reshape(rows, width, *xs.shape[1:]), ys.reshape(rows, width, *ys.shape[1:]),
                mask)
    x = np.zeros((rows * width, *xs.shape[1:]), xs.dtype)
    y = np.zeros((rows * width, *ys.shape[1:]), ys.dtype)
    x[:wanted.size][wanted], y[:wanted.size][wanted] = xs, ys
    full_mask = np.zeros((rows, width), bool)
    full_mask[:len(mask)] = mask
    return (x.reshape(rows, width, *xs.shape[1:]), y.reshape(rows, width, *ys.shape[1:]),
            full_mask)


def background(items: Iterable, depth: int) -> Iterator:
    """Yields ``items``, computed ahead by a background thread (at most ``depth`` waiting).

    An exception in the thread is raised in the consumer; closing the generator
    stops the thread after the item it is computing.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put((done, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            ready.put((done, error))

    thread = threading.Thread(target=produce, daemon=True, name="fnlearn-prefetch")
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def blocks(source, index: np.ndarray, mask: np.ndarray, plan: Sequence[tuple[int, int]],
           rows: int, columns: slice, place: Callable, workers: int = 4,
           prefetch: int = 2) -> Iterator[tuple[int, int, Any]]:
    """``(begin, end, placed_block)`` for each call of ``plan``, read and placed ahead of use.

    Args:
      source: the adapted source.
      index, mask: the epoch's ``(steps, batch_size)`` positions and mask (host arrays).
      plan: ``(begin, end)`` rows per call (``chunks``).
      rows: rows of every block (``steps_per_call``); shorter calls get empty rows.
      columns: the slice of each global batch this process reads.
      place: turns a host ``(x, y, mask)`` block into device arrays.
      workers, prefetch: reader threads and blocks read ahead.
    """
    def produce():
        with ThreadPoolExecutor(workers) as pool:
            for begin, end in plan:
                host = read_block(source, index[begin:end], mask[begin:end], columns, rows,
                                  None if hasattr(source, "read") else pool)
                yield begin, end, place(host)

    return background(produce(), prefetch)


def tfds_source(name: str, split: str = "train", *, data_dir: str | None = None,
                keys: tuple[str, str] = ("image", "label"),
                steps_per_call: int = STEPS_PER_CALL) -> Stream:
    """A prepared tensorflow-datasets dataset as a ``Stream``, read by random access.

    ``tfds.data_source`` opens the dataset's ArrayRecord files without loading
    them: ``fit`` reads only the examples of each block, as it trains.

    Args:
      name: the tfds name, e.g. ``"mnist"``; prepared as ArrayRecord
        (``tfds.builder(name, file_format="array_record").download_and_prepare()``).
      split: the split, e.g. ``"train"`` or ``"train[:90%]"``.
      data_dir: tfds's data directory (default its own).
      keys: ``(input_key, label_key)`` of the dataset's features.
      steps_per_call: batches per compiled call.

    Returns:
      A ``Stream`` for ``fit(model, stream, None, ...)`` or ``validation_data``.
    """
    import tensorflow_datasets as tfds

    return stream(tfds.data_source(name, split=split, data_dir=data_dir), keys=keys,
                  steps_per_call=steps_per_call)


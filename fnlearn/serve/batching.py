"""Dynamic batching: concurrent requests merged into one call of a fixed-size compiled function.

Each request is a NumPy batch of rows, or a tuple of them with the same number of
rows (one per named input of a model taking several; the outputs are then a tuple
too, each cut back per request alike). ``DynamicBatcher.submit`` queues it and
waits; one worker takes queued requests together and runs them as one call,
handing each request exactly its own rows back. A batch is closed when it holds
``max_batch_size`` rows, when the first of its requests has waited ``timeout_s``,
or as soon as every request the server is still reading (``incoming``) has
joined: a lone client never waits for company that is not coming. Every call is padded to one of a
few fixed ``batch_sizes``, so a compiled function never sees a new shape under
load. With batching off each request is its own call (still padded).

The logic knows nothing of HTTP: the server and the tests drive it alike.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

# Below 17 rows XLA on CPU picks other matrix-multiply kernels than above, and a row's
# last bits differ with the kernel; 32 and up keeps every call in one kernel regime.
SMALLEST_DEFAULT_BATCH = 32


def default_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two from 32 up to ``max_batch_size`` (which is always the last size).

    Args:
      max_batch_size: the most rows in one call.

    Returns:
      The ascending padded sizes, e.g. ``(32, 64, 128)`` for 128.
    """
    if not isinstance(max_batch_size, int) or max_batch_size <= 0:
        raise ValueError(f"max_batch_size must be a positive int, got {max_batch_size!r}")
    sizes, size = [], SMALLEST_DEFAULT_BATCH
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


@dataclass(frozen=True)
class BatchPolicy:
    """How requests are merged into calls.

    Attributes:
      enabled: merge concurrent requests (False: one call per request).
      max_batch_size: the most rows merged into one call.
      timeout_s: the longest the first request of a batch waits for the requests still
        being read (``DynamicBatcher.incoming``) to join it.
      batch_sizes: the sizes calls are padded to, ascending (default: ``default_batch_sizes``).
      max_queued: requests waiting beyond this many are refused (``OverloadedError``).
    """

    enabled: bool = True
    max_batch_size: int = 128
    timeout_s: float = 0.001
    batch_sizes: tuple[int, ...] = field(default=())
    max_queued: int = 1024

    def __post_init__(self):
        sizes = tuple(self.batch_sizes) or default_batch_sizes(self.max_batch_size)
        if any(not isinstance(s, int) or s <= 0 for s in sizes) or list(sizes) != sorted(
                set(sizes)):
            raise ValueError(f"batch_sizes must be distinct positive ints in ascending order, "
                             f"got {self.batch_sizes!r}")
        if sizes[-1] < self.max_batch_size:
            raise ValueError(f"the largest batch size {sizes[-1]} is below max_batch_size "
                             f"{self.max_batch_size}: a merged call would not fit")
        if not self.timeout_s >= 0:
            raise ValueError(f"timeout_s must be >= 0, got {self.timeout_s!r}")
        if not isinstance(self.max_queued, int) or self.max_queued <= 0:
            raise ValueError(f"max_queued must be a positive int, got {self.max_queued!r}")
        object.__setattr__(self, "batch_sizes", sizes)


class OverloadedError(RuntimeError):
    """A request cannot be taken now: ``BatchPolicy.max_queued`` are waiting, or shutdown began."""


Rows = np.ndarray | tuple[np.ndarray, ...]


def row_count(x: Rows) -> int:
    """The rows of a batch (of its first array, for a tuple)."""
    return len(x[0]) if isinstance(x, tuple) else len(x)


def _each(fn: Callable[[np.ndarray], np.ndarray], x: Rows) -> Rows:
    return tuple(fn(a) for a in x) if isinstance(x, tuple) else fn(x)


def _rows_between(x: Rows, start: int, stop: int) -> Rows:
    return _each(lambda a: np.asarray(a)[start:stop], x)


def _padded(x: Rows, size: int) -> Rows:
    # Padding repeats a real row: zeros could be out of a model's range and cost nothing less.
    return _each(lambda a: np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)]), x)


def concatenate_rows(batches: Sequence[Rows]) -> Rows:
    """The rows of ``batches`` one after the other (array by array, for tuples)."""
    if len(batches) == 1:
        return batches[0]
    if isinstance(batches[0], tuple):
        return tuple(np.concatenate(arrays) for arrays in zip(*batches))
    return np.concatenate(batches)


def padded_size(rows: int, batch_sizes: Sequence[int]) -> int:
    """The smallest of ``batch_sizes`` that holds ``rows`` rows (the largest if none does)."""
    return next((size for size in batch_sizes if size >= rows), batch_sizes[-1])


def run_padded(fn: Callable[[Rows], Rows], x: Rows, batch_sizes: Sequence[int]) -> Rows:
    """``fn(x)`` computed in chunks padded to ``batch_sizes``, so ``fn`` sees only those shapes.

    Args:
      fn: the batched function (rows in, rows out; tuples of arrays in and out for a
        model with several inputs and outputs).
      x: the rows, any number of them (at least one).
      batch_sizes: the allowed call sizes, ascending; chunks are at most the largest.

    Returns:
      ``fn``'s outputs for exactly the rows of ``x``.
    """
    outputs, largest = [], batch_sizes[-1]
    for start in range(0, row_count(x), largest):
        chunk = _rows_between(x, start, start + largest)
        rows = row_count(chunk)
        outputs.append(_rows_between(fn(_padded(chunk, padded_size(rows, batch_sizes))), 0,
                                     rows))
    return concatenate_rows(outputs)


def split_rows(outputs: Rows, counts: Sequence[int]) -> list[Rows]:
    """Cuts merged ``outputs`` back into consecutive pieces of ``counts`` rows each."""
    if sum(counts) != row_count(outputs):
        raise ValueError(f"{row_count(outputs)} output rows cannot be split into {list(counts)}")
    if isinstance(outputs, tuple):
        return list(zip(*(split_rows(a, counts) for a in outputs)))
    return np.split(outputs, np.cumsum(counts)[:-1])


@dataclass
class _Request:
    rows: Rows
    future: asyncio.Future


class DynamicBatcher:
    """Runs ``fn`` on requests from one event loop, merging concurrent ones per ``policy``.

    Use it inside the loop that will submit: ``async with DynamicBatcher(fn, policy) as b:``
    then ``await b.submit(x)``. On leaving, queued and running requests are finished first.
    ``on_call(rows)`` is told the rows of every model call before padding, and
    ``on_queue(n)`` the number of requests waiting whenever it changes (for metrics).
    """

    def __init__(self, fn: Callable[[Rows], Rows], policy: BatchPolicy, *,
                 on_call: Callable[[int], None] | None = None,
                 on_queue: Callable[[int], None] | None = None):
        self.fn, self.policy = fn, policy
        self.on_call, self.on_queue = on_call, on_queue
        self.calls = 0  # model calls made, for tests and metrics
        self._pending: collections.deque[_Request] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._incoming = 0
        self._worker: asyncio.Task | None = None
        workers = 1 if policy.enabled else min(4, os.cpu_count() or 1)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="fnlearn-serve")
        self._in_flight: set[asyncio.Future] = set()

    async def __aenter__(self) -> DynamicBatcher:
        if self.policy.enabled:
            self._worker = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def _call(self, x: Rows) -> Rows:
        return run_padded(self.fn, x, self.policy.batch_sizes)

    def _count_calls(self, rows: int) -> None:
        largest = self.policy.batch_sizes[-1]
        self.calls += -(-rows // largest)
        if self.on_call is not None:
            for start in range(0, rows, largest):
                self.on_call(min(largest, rows - start))

    def _queue_changed(self) -> None:
        if self.on_queue is not None:
            self.on_queue(len(self._in_flight) if not self.policy.enabled else len(self._pending))

    @property
    def closing(self) -> bool:
        """True once ``close`` began: ``submit`` refuses new requests."""
        return self._closing

    async def submit(self, rows: Rows) -> Rows:
        """Outputs for ``rows`` (a batch of at least one row, or a tuple of such batches of
        the same rows, one per input), computed with others' rows.

        Raises:
          OverloadedError: too many requests are waiting already, or the batcher is closing.
        """
        if self._closing:
            raise OverloadedError("the server is shutting down")
        waiting = len(self._in_flight) if not self.policy.enabled else len(self._pending)
        if waiting >= self.policy.max_queued:
            raise OverloadedError(f"{waiting} requests are waiting; try again later")
        loop = asyncio.get_running_loop()
        if not self.policy.enabled:
            self._count_calls(row_count(rows))
            future = loop.run_in_executor(self._executor, self._call, rows)
            self._in_flight.add(future)
            future.add_done_callback(self._done)
            self._queue_changed()
            return await future
        request = _Request(rows, loop.create_future())
        self._pending.append(request)
        self._queue_changed()
        self._arrived.set()
        return await request.future

    def _done(self, future: asyncio.Future) -> None:
        self._in_flight.discard(future)
        self._queue_changed()

    @contextlib.contextmanager
    def incoming(self):
        """Marks a request being read and decoded: an open batch may wait for it to join.

        Wrap everything from the first byte of a request to the end of its ``submit``
        in it; a request that never submits (a bad one) only ends the wait on leaving.
        """
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            self._arrived.set()

    def _worth_waiting(self) -> bool:
        live = [r for r in self._pending if not r.future.done()]
        return (len(live) < self._incoming and not self._closing
                and sum(row_count(r.rows) for r in live) < self.policy.max_batch_size)

    async def _next_batch(self) -> list[_Request]:
        while not self._pending:
            if self._closing:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.timeout_s
        while self._worth_waiting():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        batch, rows = [], 0
        while self._pending:
            request = self._pending[0]
            if request.future.done():  # timed out or cancelled while waiting: skip it
                self._pending.popleft()
                continue
            if batch and rows + row_count(request.rows) > self.policy.max_batch_size:
                break
            batch.append(self._pending.popleft())
            rows += row_count(request.rows)
        self._queue_changed()
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not (self._closing and not self._pending):
            batch = await self._next_batch()
            if not batch:
                continue
            counts = [row_count(r.rows) for r in batch]
            merged = concatenate_rows([r.rows for r in batch])
            self._count_calls(sum(counts))
            try:
                outputs = await loop.run_in_executor(self._executor, self._call, merged)
                pieces = split_rows(outputs, counts)
            except Exception as error:  # noqa: BLE001 - handed to every request of the batch
                pieces = [error] * len(batch)
            for request, piece in zip(batch, pieces):
                if request.future.done():
                    continue
                if isinstance(piece, Exception):
                    request.future.set_exception(piece)
                else:
                    request.future.set_result(piece)

    async def close(self) -> None:
        """Finishes the queued and running requests, then stops the worker and its thread."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._executor.shutdown(wait=True)

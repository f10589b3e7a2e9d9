"""The streamed driver's feed: blocks of batches read from a source while the device trains.

``fit(model, source, None, ...)`` comes here. The epoch's order is
``fnlearn.step.epoch_batches`` (the permutation in-memory training draws), pulled to
the host once per epoch. Each call runs a block of ``steps_per_call`` batches: the
block of examples is an array ``(rows, batch, ...)`` and row ``i`` of the scan takes
``block[i]``, so a streamed run computes what an in-memory run computes, bit for bit.
While the device runs one block, a background thread reads and places the next.

With a mesh, the block's batch axis is sharded over the mesh's first axis and each
process reads only the columns (examples of every global batch) its own devices
hold, assembled with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import jax
import numpy as np

from fnlearn import checks
from fnlearn.data import sources
from fnlearn.loop import compiled
from fnlearn.loop.arrays import Validation, validate


def block_placement(sharding):
    """``(place, block_sharding)``: how a host block becomes device arrays."""
    if sharding is None:
        return (lambda host: tuple(jax.device_put(a) for a in host)), None
    from jax.sharding import NamedSharding, PartitionSpec

    block = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))

    def place(host):
        x, y, mask = host
        rows, width = mask.shape
        global_width = width * jax.process_count()
        return tuple(jax.make_array_from_process_local_data(
            block, a, (rows, global_width, *a.shape[2:])) for a in (x, y, mask))

    return place, block


def process_columns(block, batch_size: int, rows: int) -> slice:
    """The columns of every global batch that this process's devices hold under ``block``."""
    if block is None:
        return slice(0, batch_size)
    spans = [s[1] for s in block.addressable_devices_indices_map((rows, batch_size)).values()]
    start = min(s.start or 0 for s in spans)
    stop = max(batch_size if s.stop is None else s.stop for s in spans)
    if (stop - start) * jax.process_count() != batch_size:
        raise ValueError(f"each process must hold an equal, contiguous part of every batch of "
                         f"{batch_size}; this one holds columns {start}:{stop}")
    return slice(start, stop)


def probe(source, n: int):
    """The first (up to 32) examples, read item by item, to check shapes before compiling."""
    items = [source[i] for i in range(min(n, 32))]
    x, y = np.stack([np.asarray(a) for a, _ in items]), np.stack([np.asarray(b) for _, b in items])
    return checks.as_host_array("source inputs", x), checks.as_host_array("source labels", y)


def validate_source(step, state, val, place, layout, devices: int) -> dict[str, float]:
    """``val_`` logs over a source, read in chunks of ``EVAL_BATCH_SIZE``, summed on the device."""
    n, chunk = len(val), compiled.EVAL_BATCH_SIZE
    totals = logs = None
    for begin in range(0, n, chunk):
        positions = np.arange(begin, min(n, begin + chunk))
        x, y = sources.read_examples(val, positions)
        size = compiled.bucket(len(positions), 8 * devices)
        batches = tuple(place(np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]),
                                                          a.dtype)])) for a in (x, y))
        if totals is None:
            totals = compiled.evaluation_zeros(step, state, batches)
        totals, logs = compiled.evaluate(state, batches, np.int32(len(positions)), totals,
                                         step=step, chunk=size, layout=layout)
    return {f"val_{name}": float(value) for name, value in jax.device_get(logs).items()}


class StreamFeed:
    """Blocks read from a source on the host (``fnlearn.loop.epochs.Feed``)."""

    epochs_per_call = 0

    def __init__(self, step, stream: sources.Stream, batch_size: int, shuffle: bool, placement,
                 state, validation):
        self.step, self.stream, self.source = step, stream, stream.source
        self.num_examples = len(stream.source)
        self.batch_size, self.shuffle, self.placement = batch_size, shuffle, placement
        self.validation = validation
        # Blocks arrive split by the batch axis: a call takes their rows as they are.
        self.layout = placement.layout(state, split_data=False)
        self.steps = -(-self.num_examples // batch_size)
        self.rows = min(stream.steps_per_call, self.steps)
        self.place_block, block = block_placement(placement.batch)
        self.columns = process_columns(block, batch_size, self.rows)
        self.rows_index = placement.replicate(np.arange(self.rows, dtype=np.int32))

    def _example_block(self):
        x, y = probe(self.source, 1)
        return tuple(jax.ShapeDtypeStruct((self.rows, self.batch_size, *a.shape[1:]), a.dtype)
                     for a in (x, y))

    def zero_sums(self, state):
        first = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                             self._example_block())
        return compiled.zero_sums(self.step, state, first)

    def validate(self, state) -> dict[str, float]:
        if self.validation is None:
            return {}
        if isinstance(self.validation, Validation):
            return validate(self.step, state, self.validation, self.placement.layout(state))
        return validate_source(self.step, state, self.validation, self.placement.replicate,
                               self.layout, self.placement.devices)

    def calls(self, state, done: int, stops: set[int]):
        start = state._replace(step=np.int32(int(state.step) - done))
        index, mask = jax.device_get(compiled.epoch_index(
            start, self.num_examples, self.batch_size, self.shuffle, self.steps))
        plan = sources.chunks(self.steps, done, self.rows, stops)
        static = dict(step=self.step, rows=self.rows, layout=self.layout)
        for begin, end, (x, y, m) in sources.blocks(
                self.source, np.asarray(index), np.asarray(mask), plan, self.rows, self.columns,
                self.place_block, self.stream.workers, self.stream.prefetch):
            def dispatch(state, sums, stopped, x=x, y=y, m=m, end=end):
                return compiled.train_rows(state, sums, stopped, (x, y), self.rows_index, m,
                                           np.int32(0), np.bool_(end >= self.steps), **static)

            yield begin, end, dispatch

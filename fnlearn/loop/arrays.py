"""The in-memory driver's feed: the dataset on the device, batches gathered by the program.

The data is placed once, in its own dtype (uint8 images stay uint8). An epoch's
order (``fnlearn.step.epoch_batches``) is drawn on the device, and each call gathers
its batches from the device arrays, so nothing crosses to the device during
training. When the host has nothing to do within epochs, ``run_epochs`` runs up to
``EPOCHS_PER_CALL`` of them as one call (the epoch count a runtime value, so
``fit(epochs=1)`` and ``fit(epochs=30)`` share one compilation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnlearn.loop import compiled
from fnlearn.loop.epochs import per_call_rows


@dataclass
class Validation:
    """Validation data on the device, padded to a multiple of ``chunk`` rows."""

    batches: Any
    count: int
    chunk: int


def validation_arrays(batches, place, devices: int = 1,
                      chunk: int = compiled.EVAL_BATCH_SIZE) -> Validation:
    """``batches`` padded to their bucket and placed (``place``: a tree of arrays to devices).

    Chunks are a multiple of ``devices`` (the data axis), so each splits evenly.
    """
    count = int(jax.tree.leaves(batches)[0].shape[0])
    chunk = compiled.bucket(min(chunk, compiled.bucket(count, 8)), devices)
    padded = compiled.bucket(count, chunk)
    return Validation(place(jax.tree.map(lambda a: pad_rows(a, padded), batches)), count, chunk)


def pad_rows(array, rows: int):
    """``array`` with zero rows appended up to ``rows``, where it is (host or device)."""
    if array is None or array.shape[0] == rows:
        return array
    if isinstance(array, jax.Array):
        return jnp.pad(array, [(0, rows - array.shape[0])] + [(0, 0)] * (array.ndim - 1))
    return np.concatenate([array, np.zeros((rows - array.shape[0], *array.shape[1:]),
                                           array.dtype)])


def validate(step, state, validation: Validation | None, layout) -> dict[str, float]:
    """``val_``-prefixed logs over ``validation`` (host floats), or {}."""
    if validation is None:
        return {}
    zeros = compiled.evaluation_zeros(step, state, validation.batches)
    _, logs = compiled.evaluate(state, validation.batches, np.int32(validation.count), zeros,
                                step=step, chunk=validation.chunk, layout=layout)
    return {f"val_{name}": float(value) for name, value in jax.device_get(logs).items()}


class ArrayFeed:
    """Batches gathered on the device from the whole dataset (``fnlearn.loop.epochs.Feed``)."""

    def __init__(self, step, batches, num_examples: int, batch_size: int, shuffle: bool,
                 layout, validation: Validation | None):
        self.step, self.batches, self.num_examples = step, batches, num_examples
        self.batch_size, self.shuffle, self.layout = batch_size, shuffle, layout
        self.validation = validation
        self.steps = -(-num_examples // batch_size)
        self.epochs_per_call = compiled.EPOCHS_PER_CALL

    def zero_sums(self, state):
        return compiled.zero_sums(self.step, state, self.batches)

    def validate(self, state) -> dict[str, float]:
        return validate(self.step, state, self.validation, self.layout)

    def calls(self, state, done: int, stops: set[int]):
        rows = per_call_rows(self.steps, stops)
        # The epoch's order is drawn from the state it began with (``done`` steps ago).
        start = state._replace(step=np.int32(int(state.step) - done))
        index, mask = compiled.epoch_index(start, self.num_examples, self.batch_size,
                                           self.shuffle, rows)
        static = dict(step=self.step, rows=rows, layout=self.layout)
        for begin in range(done, self.steps, rows):
            def dispatch(state, sums, stopped, begin=begin):
                return compiled.train_rows(state, sums, stopped, self.batches, index, mask,
                                           np.int32(begin), np.bool_(begin + rows >= self.steps),
                                           **static)

            yield begin, min(begin + rows, self.steps), dispatch

    def run_epochs(self, state, count: int):
        """``count`` whole epochs in one call: ``(state, logs stacked by epoch)`` on the host."""
        val = self.validation
        state, stacked = compiled.train_epochs(
            state, self.batches, val.batches if val else None, np.int32(val.count if val else 0),
            np.int32(count), step=self.step, num_examples=self.num_examples,
            batch_size=self.batch_size, shuffle=self.shuffle, layout=self.layout,
            chunk=val.chunk if val else compiled.EVAL_BATCH_SIZE)
        return state, jax.device_get(stacked)

"""Every program ``fit``, ``evaluate`` and ``predict`` compile, in one place.

Each is a ``jax.jit`` of a pure function over the pieces in ``fnlearn.step``,
compiled with ``fnlearn.compiler``'s options (LLVM at -O1 on CPU); the step
(``fnlearn.objectives``), batch size, shuffle flag and batch sharding are static, so
equal configurations share one compilation (``fnlearn.count_compilations`` counts
them). The training programs donate the state they are given: its buffers (params,
optimizer moments) are reused for the state they return, so a state exists once.

- ``train_epochs``: up to ``EPOCHS_PER_CALL`` epochs in one call, the epoch count a
  runtime value, each epoch's logs in a buffer; validation inside.
- ``epoch_index`` and ``train_rows``: an epoch as calls of ``rows`` batches, for a
  run the host must see during epochs (the progress bar, batch-level callbacks) and
  for streamed blocks.
- ``evaluate`` and ``predict``: inference over padded buckets with the example count
  a runtime value, so 499 and 500 examples share a program.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fnlearn import step as step_lib
from fnlearn.compiler import program
from fnlearn.nn.core import apply
from fnlearn.sharding import Layout
from fnlearn.state import TrainState

# Epochs one compiled call can run when the host has nothing to do between them;
# the per-epoch logs of a call are buffers of this length.
EPOCHS_PER_CALL = 1024
# Examples per compiled chunk in evaluation and prediction: big enough to keep the
# matrix units busy, small enough to bound memory.
EVAL_BATCH_SIZE = 1024


def bucket(num_examples: int, chunk: int) -> int:
    """The padded length of ``num_examples`` examples evaluated ``chunk`` at a time."""
    return max(1, math.ceil(num_examples / chunk)) * chunk


def evaluation_sums(step, state: TrainState, batches, num_examples, chunk: int,
                    layout: Layout = step_lib.NO_LAYOUT):
    """The step's summed logs over the first ``num_examples`` (a runtime value) rows."""
    padded = jax.tree.leaves(batches)[0].shape[0]
    index = jnp.arange(padded).reshape(padded // chunk, chunk)
    mask = index < num_examples
    first = jax.tree.map(lambda a: a[index[0]], batches)
    shapes = jax.eval_shape(step.evaluate, state, first, mask[0])
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(totals, rows):
        idx, m = rows
        sums = step.evaluate(state, layout.constrain_batch(layout.gather(batches, idx)), m)
        return jax.tree.map(jnp.add, totals, sums), None

    return jax.lax.scan(body, zero, (index, mask))[0]


@program(static_argnames=("step", "chunk", "layout"))
def evaluate(state, batches, num_examples, totals, *, step, chunk, layout=step_lib.NO_LAYOUT):
    """Adds ``step``'s sums over ``batches`` (a multiple of ``chunk`` rows) to ``totals``.

    Returns ``(totals, logs)``: the new totals and the logs they make. Only the first
    ``num_examples`` rows (a runtime value) count.
    """
    sums = evaluation_sums(step, state, batches, num_examples, chunk, layout)
    totals = jax.tree.map(jnp.add, totals, sums)
    return totals, step.logs(totals)


def evaluation_zeros(step, state, batches):
    """Host zeros in the structure of ``step``'s evaluation sums (traced, not compiled)."""
    import numpy as np

    first = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype), batches)
    mask = jax.ShapeDtypeStruct((1,), jnp.bool_)
    shapes = jax.eval_shape(step.evaluate, state, first, mask)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


@program(static_argnames=("model", "chunk"))
def predict(params, model_state, x, *, model, chunk):
    """Model outputs in inference mode for every row of ``x`` (a multiple of ``chunk`` rows)."""
    padded = jax.tree.leaves(x)[0].shape[0]
    index = jnp.arange(padded).reshape(padded // chunk, chunk)
    out = jax.lax.map(lambda idx: apply(model, params, jax.tree.map(lambda a: a[idx], x),
                                        state=model_state)[0], index)
    return jax.tree.map(lambda o: o.reshape(padded, *o.shape[2:]), out)


def _train_epochs(state, batches, validation, val_count, num_epochs, *, step, num_examples,
                  batch_size, shuffle, layout, chunk):
    def one_epoch(state, stopped=False):
        state, sums, bad = step_lib.epoch(step, state, batches, num_examples, batch_size,
                                          shuffle, layout, stopped)
        logs = step.logs(sums)
        if validation is not None:
            val = step.logs(evaluation_sums(step, state, validation, val_count, chunk, layout))
            logs.update({f"val_{name}": value for name, value in val.items()})
        return state, {**logs, **step_lib.epoch_extras(state, bad)}

    shapes = jax.eval_shape(one_epoch, state)[1]
    buffers = jax.tree.map(lambda s: jnp.full((EPOCHS_PER_CALL, *s.shape), -1, s.dtype), shapes)

    def body(i, carry):
        state, buffers, stopped = carry
        # After a non-finite loss, the epochs still left in this call change nothing.
        new_state, logs = one_epoch(state, stopped)
        buffers = jax.tree.map(lambda b, v: b.at[i].set(v), buffers, logs)
        return new_state, buffers, stopped | (logs["nonfinite_step"] >= 0)

    state, buffers, _ = jax.lax.fori_loop(0, num_epochs, body, (state, buffers, jnp.bool_(False)))
    return state, buffers


# Runs ``num_epochs`` (runtime, at most ``EPOCHS_PER_CALL``) epochs in one call; returns
# ``(state, logs)`` with each logged value stacked by epoch. ``validation`` (padded to a
# multiple of ``chunk``, ``val_count`` real rows) is evaluated after each epoch.
train_epochs = program(_train_epochs, donate_argnums=0, static_argnames=(
    "step", "num_examples", "batch_size", "shuffle", "layout", "chunk"))


@program(static_argnums=(1, 2, 3, 4))
def epoch_index(state, num_examples, batch_size, shuffle, rows):
    """The epoch's batches, padded with empty ones to a whole number of ``rows``-row calls."""
    index, mask = step_lib.epoch_batches(state, num_examples, batch_size, shuffle)
    pad = ((0, math.ceil(index.shape[0] / rows) * rows - index.shape[0]), (0, 0))
    return jnp.pad(index, pad), jnp.pad(mask, pad)


@program(donate_argnums=(0, 1, 2), static_argnames=("step", "rows", "layout"))
def train_rows(state, sums, stopped, batches, index, mask, begin, last, *, step, rows,
               layout):
    """Runs the ``rows`` batches ``index[begin:begin + rows]``, adding to the epoch's ``sums``.

    Nothing is updated once ``stopped`` (a non-finite loss earlier in the epoch). With
    ``last``, the epoch ends here: ``state.epoch`` counts it unless a loss was not finite.

    Returns ``(state, sums, stopped, logs, nonfinite_row)``: ``logs`` are the epoch's
    running values so far, ``nonfinite_row`` the row (counted from ``begin``) of this
    call's first non-finite step, -1 if none.
    """
    index = jax.lax.dynamic_slice_in_dim(index, begin, rows)
    mask = jax.lax.dynamic_slice_in_dim(mask, begin, rows)
    state, more, bad = step_lib.train_steps(step, state, batches, index, mask, layout=layout,
                                            stopped=stopped)
    stopped = stopped | (bad >= 0)
    state = state._replace(epoch=state.epoch + (last & ~stopped))
    sums = jax.tree.map(jnp.add, sums, more)
    return state, sums, stopped, step.logs(sums), bad


def zero_sums(step, state: TrainState, batches):
    """Host zeros in the structure of ``step``'s sums for one batch of ``batches`` (no compile)."""
    import numpy as np

    first = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype), batches)
    shapes = jax.eval_shape(lambda s, b: step.zero_sums(s, b), state, first)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)

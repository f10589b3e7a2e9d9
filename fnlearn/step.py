"""The training step and epoch as pure functions: what ``fit`` runs, open to any loop.

``train_step(state, x, y, ...)`` is one optimizer update on one batch, in the shape
of Flax's ``TrainState.apply_gradients`` step or the article's PyTorch loop body;
``jax.jit`` it and call it from a Python loop of your own. ``train_epoch`` runs a
whole epoch of steps inside ``jax.lax.scan``: the permutation is drawn on the
device, the last partial batch is padded to the batch size and masked, so every
epoch has one static shape and counts every example once. ``fit`` is a thin host
driver over these functions (``fnlearn.train``).

Randomness is a function of the state alone: the epoch's shuffle and each step's
dropout key are folded from ``state.key``, ``state.epoch`` and ``state.step``, so the
same state gives the same bits in any loop. A step whose loss is not finite (or
whose batch is entirely padding) changes nothing; ``train_epoch`` reports the
first such non-finite step and applies no update after it.

An optimizer that is an ``optax.GradientTransformationExtraArgs`` is called with
``epoch=state.epoch``, so per-epoch schedules (``fnlearn.optim.step_lr``) need no
steps-per-epoch arithmetic; a plain ``GradientTransformation`` is called without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnlearn import losses as losses_lib
from fnlearn import optim
from fnlearn.nn.core import Layer, apply
from fnlearn.state import TrainState

# Examples per compiled chunk in evaluation and prediction: big enough to keep
# the matrix units busy, small enough to bound memory.
EVAL_BATCH_SIZE = 1024


def epoch_keys(state: TrainState) -> tuple[jax.Array, jax.Array]:
    """The epoch's ``(shuffle_key, dropout_key)``, folded from ``state.key`` and ``state.epoch``."""
    epoch_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.epoch)
    shuffle_key, dropout_key = jax.random.split(epoch_key)
    return shuffle_key, dropout_key


def epoch_batches(state: TrainState, num_examples: int, batch_size: int,
                  shuffle: bool = True) -> tuple[jax.Array, jax.Array]:
    """The epoch's batches as ``(index, mask)``, each of shape ``(steps, batch_size)``.

    ``index[i]`` are the example positions of batch ``i`` (a permutation drawn from
    ``state.key`` and ``state.epoch`` when ``shuffle``); the last batch is padded
    with position 0 where ``mask`` is False. ``num_examples``, ``batch_size`` and
    ``shuffle`` are static under ``jax.jit``.
    """
    steps = math.ceil(num_examples / batch_size)
    padded = steps * batch_size
    order = (jax.random.permutation(epoch_keys(state)[0], num_examples) if shuffle
             else jnp.arange(num_examples))
    index = jnp.concatenate([order, jnp.zeros(padded - num_examples, order.dtype)])
    mask = jnp.arange(padded) < num_examples
    return index.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def batch_stats(params, model_state, xb, yb, mask, key, *, model: Layer, loss_fn: Callable,
                metric_fns: Sequence[Callable], train: bool):
    """The masked mean loss of one batch, and ``(new_model_state, (loss_sum, metric_sums, count))``.

    ``mask`` weights the rows (padding rows weigh 0). Differentiable in ``params``.
    """
    preds, new_state = apply(model, params, xb, state=model_state, key=key, train=train,
                             mask=mask)
    weights = mask.astype(jnp.float32)
    count = jnp.sum(weights)
    loss_sum = jnp.sum(loss_fn(yb, preds) * weights)
    metric_sums = tuple(jnp.sum(fn(yb, preds) * weights) for fn in metric_fns)
    return loss_sum / jnp.maximum(count, 1.0), (new_state, (loss_sum, metric_sums, count))


def _zero_sums(metric_fns) -> tuple:
    zero = jnp.zeros((), jnp.float32)
    return zero, tuple(zero for _ in metric_fns), zero


def _step(state: TrainState, xb, yb, mask, active, *, model, loss_fn, metric_fns, optimizer,
          sharding=None):
    """One masked step: ``(state, sums, nonfinite)``; no update if inactive, empty or not finite."""
    if sharding is not None:
        xb = jax.lax.with_sharding_constraint(xb, sharding)
        yb = jax.lax.with_sharding_constraint(yb, sharding)
    mask = mask.astype(jnp.bool_)

    def run(state):
        key = jax.random.fold_in(epoch_keys(state)[1], state.step)
        grad_fn = jax.value_and_grad(batch_stats, has_aux=True)
        (mean_loss, (model_state, sums)), grads = grad_fn(
            state.params, state.model_state, xb, yb, mask, key, model=model, loss_fn=loss_fn,
            metric_fns=metric_fns, train=True)
        finite = jnp.isfinite(mean_loss)

        def update(state):
            extra = ({"epoch": state.epoch}
                     if isinstance(optimizer, optax.GradientTransformationExtraArgs) else {})
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra)
            return state._replace(params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state, model_state=model_state,
                                  step=state.step + 1)

        state = jax.lax.cond(finite & active, update, lambda s: s, state)
        return state, sums, ~finite

    def skip(state):
        return state, _zero_sums(metric_fns), jnp.bool_(False)

    # A batch that is all padding (the tail of a chunked epoch) costs nothing.
    return jax.lax.cond(jnp.any(mask), run, skip, state)


def _resolve(loss, metrics) -> tuple[Callable, tuple[str, ...], tuple[Callable, ...]]:
    loss_fn = losses_lib.get_loss(loss)
    pairs = [losses_lib.get_metric(m) for m in metrics]
    return loss_fn, tuple(n for n, _ in pairs), tuple(f for _, f in pairs)


def train_step(state: TrainState, x, y, *, model: Layer, loss: str | Callable,
               optimizer: optax.GradientTransformation, metrics: Sequence[str | Callable] = (),
               mask=None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on the batch ``(x, y)``; pure and jittable.

    Args:
      state: the ``TrainState`` (``fnlearn.init_state``).
      x, y: one batch of inputs and labels.
      model, loss, optimizer, metrics: as for ``fit`` (static under ``jax.jit``).
      mask: ``(batch,)`` booleans marking real rows; padding rows count for nothing.

    Returns:
      ``(state, logs)``: the updated state (unchanged if the loss is not finite) and
      the batch's mean ``loss`` and metrics, with ``nonfinite`` (a bool).
    """
    loss_fn, names, metric_fns = _resolve(loss, metrics)
    if mask is None:
        mask = jnp.ones(x.shape[:1], jnp.bool_)
    state, (loss_sum, metric_sums, count), nonfinite = _step(
        state, x, y, mask, jnp.bool_(True), model=model, loss_fn=loss_fn,
        metric_fns=metric_fns, optimizer=optimizer)
    count = jnp.maximum(count, 1.0)
    logs = {"loss": loss_sum / count, **{n: s / count for n, s in zip(names, metric_sums)}}
    return state, {**logs, "nonfinite": nonfinite}


def train_steps(state: TrainState, x, y, index, mask, *, model: Layer, loss_fn: Callable,
                metric_fns: Sequence[Callable], optimizer: optax.GradientTransformation,
                sharding=None, progress: Callable | None = None, progress_every: int = 0,
                stopped=False):
    """Runs the batches ``index`` (rows of example positions into ``x``) in one scan.

    Returns ``(state, sums, nonfinite_step)``: the summed loss and metrics with the
    example count, and the row of the first non-finite step (-1 if none), after
    which nothing is updated (nor at all when ``stopped``). With ``progress``, calls
    it on the host with the rows done and the running means every ``progress_every`` rows.
    """
    def body(carry, batch):
        state, sums, bad, row = carry
        idx, m = batch
        state, step_sums, nonfinite = _step(
            state, x[idx], y[idx], m, bad < 0, model=model, loss_fn=loss_fn,
            metric_fns=metric_fns, optimizer=optimizer, sharding=sharding)
        bad = jnp.where((bad < 0) & nonfinite, row, bad)
        sums = jax.tree.map(jnp.add, sums, step_sums)
        if progress is not None:
            jax.lax.cond((row + 1) % progress_every == 0,
                         lambda: jax.debug.callback(progress, row + 1, _means(sums)),
                         lambda: None)
        return (state, sums, bad, row + 1), None

    bad = jnp.where(stopped, jnp.int32(index.shape[0]), jnp.int32(-1))
    (state, sums, bad, _), _ = jax.lax.scan(body, (state, _zero_sums(metric_fns), bad,
                                                   jnp.int32(0)), (index, mask))
    return state, sums, bad


def _means(sums) -> dict[str, Any]:
    loss_sum, metric_sums, count = sums
    count = (max(float(count), 1.0) if isinstance(count, np.ndarray | np.generic | float)
             else jnp.maximum(count, 1.0))
    return {"loss": loss_sum / count, "metrics": tuple(s / count for s in metric_sums)}


def _epoch(state, x, y, *, model, loss_fn, metric_fns, optimizer, batch_size, shuffle,
           sharding=None, progress=None, progress_every=0, stopped=False):
    index, mask = epoch_batches(state, x.shape[0], batch_size, shuffle)
    state, sums, bad = train_steps(state, x, y, index, mask, model=model, loss_fn=loss_fn,
                                   metric_fns=metric_fns, optimizer=optimizer, sharding=sharding,
                                   progress=progress, progress_every=progress_every,
                                   stopped=stopped)
    state = state._replace(epoch=state.epoch + (bad < 0))
    logs = {**_means(sums), "nonfinite_step": bad}
    learning_rate = optim.epoch_learning_rate(state.opt_state)
    if learning_rate is not None:
        logs["learning_rate"] = learning_rate
    return state, logs


def train_epoch(state: TrainState, x, y, *, model: Layer, loss: str | Callable,
                optimizer: optax.GradientTransformation,
                metrics: Sequence[str | Callable] = (), batch_size: int = 32,
                shuffle: bool = True, sharding=None,
                progress: Callable[[jax.Array, dict], None] | None = None,
                progress_every: int = 50) -> tuple[TrainState, dict[str, jax.Array]]:
    """One epoch over ``(x, y)`` in one ``lax.scan``: shuffled, padded and masked; jittable.

    Args:
      state: the ``TrainState``; its ``epoch`` and ``key`` choose the permutation.
      x, y: the whole training set, on the device.
      model, loss, optimizer, metrics: as for ``fit``.
      batch_size: examples per step; the last batch is padded and masked.
      shuffle: draw a permutation (else the data order).
      sharding: a ``NamedSharding`` for each batch (data parallel), or None.
      progress: called on the host as ``progress(steps_done, {"loss", "metrics"})`` every
        ``progress_every`` steps (through ``jax.debug.callback``). It is part of the
        compiled program: under ``jax.jit`` pass it as a static argument, and the same
        callable to reuse the compilation.
      progress_every: steps between ``progress`` calls.

    Returns:
      ``(state, logs)``: ``state.epoch`` is one more unless a loss was not finite, and
      ``logs`` has the epoch's mean ``loss``, its metrics (in order) under ``metrics``,
      ``nonfinite_step`` (-1, or the first step whose loss was not finite) and, when the
      optimizer has an epoch schedule (``fnlearn.optim.scale_by_epoch_schedule``),
      ``learning_rate``.
    """
    loss_fn, _, metric_fns = _resolve(loss, metrics)
    return _epoch(state, x, y, model=model, loss_fn=loss_fn, metric_fns=metric_fns,
                  optimizer=optimizer, batch_size=batch_size, shuffle=shuffle,
                  sharding=sharding, progress=progress, progress_every=progress_every)


def evaluate_arrays(params, model_state, x, y, *, model: Layer, loss_fn: Callable,
                    metric_fns: Sequence[Callable], batch_size: int = EVAL_BATCH_SIZE):
    """Masked loss and metric means over ``(x, y)`` in inference mode, chunked in one scan."""
    index, mask = epoch_batches(None, x.shape[0], batch_size, shuffle=False)

    def body(totals, batch):
        idx, m = batch
        _, (_, sums) = batch_stats(params, model_state, x[idx], y[idx], m, None, model=model,
                                   loss_fn=loss_fn, metric_fns=metric_fns, train=False)
        return jax.tree.map(jnp.add, totals, sums), None

    sums, _ = jax.lax.scan(body, _zero_sums(metric_fns), (index, mask))
    means = _means(sums)
    return means["loss"], means["metrics"]


def predict_arrays(params, model_state, x, *, model: Layer, batch_size: int = EVAL_BATCH_SIZE):
    """Model outputs in inference mode for every row of ``x``, chunked by ``batch_size``."""
    n = x.shape[0]
    steps = math.ceil(n / batch_size)
    index = jnp.minimum(jnp.arange(steps * batch_size), n - 1).reshape(steps, batch_size)
    out = jax.lax.map(lambda idx: apply(model, params, x[idx], state=model_state)[0], index)
    return out.reshape(steps * batch_size, *out.shape[2:])[:n]

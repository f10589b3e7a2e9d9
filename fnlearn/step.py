"""The training step as pure functions: what ``fit`` runs, open to any loop.

``init_state`` builds a ``TrainState``; ``train_step(state, x, y, ...)`` is one
optimizer update on one batch, in the shape of Flax's ``TrainState.apply_gradients``
step or the article's PyTorch loop body (``apply_gradients`` is the update it ends
with); ``jax.jit`` it and call it from a Python loop of your own. ``train_epoch``
runs a whole epoch of steps inside ``jax.lax.scan``: the permutation is drawn on the
device, the last partial batch is padded to the batch size and masked, so every
epoch has one static shape and counts every example once.

Randomness is a function of the state alone: the shuffle of the epoch that begins at
``state.step`` and each step's dropout key are folded from ``state.key`` and
``state.step``, so the same state gives the same bits in any loop, and a loop that
forgets to count epochs still draws a new order each epoch. A step whose loss is not
finite (or whose batch is entirely padding) changes nothing.

An optimizer that is an ``optax.GradientTransformationExtraArgs`` is called with
``epoch=state.epoch``, so per-epoch schedules (``fnlearn.optim.step_lr``) need no
steps-per-epoch arithmetic; a plain ``GradientTransformation`` is called without it.

The built-in step is a ``Supervised`` value (model, losses, metrics, optimizer);
``fnlearn.loop`` drives it or a user's own step (``Custom``) the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnlearn import cache, checks, optim
from fnlearn.compiler import program
from fnlearn.nn.core import Layer, as_key, init_with_state
from fnlearn.objectives import Supervised, supervised
from fnlearn.sharding import Layout
from fnlearn.state import TrainState

NO_LAYOUT = Layout()

__all__ = ["Supervised", "apply_gradients", "epoch_batches", "init_state", "shuffle_key",
           "step_key", "supervised", "train_epoch", "train_step", "train_steps"]


def _stream(state: TrainState, which: int) -> jax.Array:
    return jax.random.fold_in(as_key(state.key, "state.key"), which)


def shuffle_key(state: TrainState) -> jax.Array:
    """The key of the shuffle of the epoch that begins at ``state.step``."""
    return jax.random.fold_in(_stream(state, 0), state.step)


def step_key(state: TrainState) -> jax.Array:
    """The key of the step ``state.step`` (dropout and any other per-step randomness)."""
    return jax.random.fold_in(_stream(state, 1), state.step)


def epoch_batches(state: TrainState | None, num_examples: int, batch_size: int,
                  shuffle: bool = True) -> tuple[jax.Array, jax.Array]:
    """The epoch's batches as ``(index, mask)``, each of shape ``(steps, batch_size)``.

    ``index[i]`` are the example positions of batch ``i`` (a permutation drawn from
    ``state.key`` and ``state.step`` when ``shuffle``); the last batch is padded
    with position 0 where ``mask`` is False. ``num_examples``, ``batch_size`` and
    ``shuffle`` are static under ``jax.jit``.
    """
    steps = math.ceil(num_examples / batch_size)
    padded = steps * batch_size
    order = (jax.random.permutation(shuffle_key(state), num_examples) if shuffle
             else jnp.arange(num_examples))
    index = jnp.concatenate([order, jnp.zeros(padded - num_examples, order.dtype)])
    mask = jnp.arange(padded) < num_examples
    return index.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def apply_gradients(state: TrainState, grads, optimizer: optax.GradientTransformation, *,
                    model_state=None) -> TrainState:
    """One optimizer update: new params and optimizer state, ``step + 1``.

    Args:
      state: the ``TrainState``.
      grads: gradients with the structure of ``state.params``.
      optimizer: the Optax optimizer ``state.opt_state`` belongs to; an
        ``optax.GradientTransformationExtraArgs`` also gets ``epoch=state.epoch``.
      model_state: the model state the forward pass returned (BatchNorm statistics),
        or None to keep ``state.model_state``.
    """
    extra = ({"epoch": state.epoch}
             if isinstance(optimizer, optax.GradientTransformationExtraArgs) else {})
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra)
    return state._replace(params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, step=state.step + 1,
                          model_state=state.model_state if model_state is None else model_state)


def _frozen_shape(shape):
    """A shape tree (a tuple of ints, or a dict or tuple of them) as a hashable value."""
    if isinstance(shape, dict):
        return "dict", tuple((k, _frozen_shape(v)) for k, v in shape.items())
    if isinstance(shape, tuple) and shape and all(isinstance(s, tuple | dict) for s in shape):
        return "tuple", tuple(_frozen_shape(s) for s in shape)
    return "shape", shape


def _thawed_shape(frozen):
    kind, value = frozen
    if kind == "dict":
        return {k: _thawed_shape(v) for k, v in value}
    if kind == "tuple":
        return tuple(_thawed_shape(v) for v in value)
    return value


@program(static_argnames=("model", "optimizer", "input_shape"))
def _init_state(seed, params, model_state, *, model, optimizer, input_shape):
    # One compiled program instead of a dispatch (and a small compilation) per
    # random draw and optimizer buffer. ``seed``: an int32 scalar or raw key data.
    # ``input_shape`` is hashable (``_frozen_shape``): a dict of shapes is not.
    key = jax.random.key(seed) if seed.ndim == 0 else jax.random.wrap_key_data(seed)
    init_key, run_key = jax.random.split(key)
    _, fresh_params, fresh_state = init_with_state(model, init_key, _thawed_shape(input_shape))
    params = fresh_params if params is None else params
    model_state = fresh_state if model_state is None else model_state
    return TrainState(params, optimizer.init(params), model_state, jnp.int32(0), jnp.int32(0),
                      jax.random.key_data(run_key))


def init_state(model: Layer, optimizer: optax.GradientTransformation | str,
               input_shape: Sequence[int] | Any, *, seed: int | jax.Array = 0, params=None,
               model_state=None) -> TrainState:
    """A fresh ``TrainState``: parameters and model state from ``model.init``, optimizer state.

    The seed is split in two: one half initializes the model, the other becomes
    ``state.key``, the run's key. So ``nn.init(model, seed)`` and ``init_state(...,
    seed=seed)`` give different parameters; ``nn.init(model, split(key(seed))[0])``
    gives ``init_state``'s.

    Args:
      model: the model.
      optimizer: an Optax optimizer (or a Keras name: ``"adam"``, ``"sgd"``, ``"rmsprop"``).
      input_shape: per-example input shape (a tuple, or a pytree of them for a model
        with several inputs).
      seed: an int, or a JAX key (typed or raw ``uint32``).
      params: start from these parameters instead of initializing.
      model_state: start from this model state (BatchNorm statistics) instead.
    """
    cache.enable_by_default()
    if optimizer is None:
        raise TypeError("init_state needs an optimizer (it builds the optimizer state); to "
                        "load trained weights for inference without one, use "
                        "fnlearn.restore_params(directory, model, input_shape)")
    optimizer = checks.resolve_optimizer(optimizer)
    if params is not None:
        checks.check_params(params, "params")
        params = jax.tree.map(lambda a: jnp.array(a, copy=True), params)
    if model_state is not None:
        model_state = jax.tree.map(lambda a: jnp.array(a, copy=True), model_state)
    if isinstance(seed, jax.Array):
        seed = jax.random.key_data(as_key(seed, "seed"))
    else:
        seed = np.int32(checks.check_seed(seed))
    return _init_state(seed, params, model_state, model=model, optimizer=optimizer,
                       input_shape=_frozen_shape(checks.shape_tree(input_shape)))


def train_step(state: TrainState, x, y, *, model: Layer, loss: str | Callable | dict,
               optimizer: optax.GradientTransformation,
               metrics: Sequence[str | Callable] | dict = (), mask=None,
               loss_weights=None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on the batch ``(x, y)``; pure and jittable.

    Args:
      state: the ``TrainState`` (``fnlearn.init_state``).
      x, y: one batch of inputs and labels (pytrees for several inputs or outputs).
      model, loss, optimizer, metrics, loss_weights: as for ``fit`` (static under ``jax.jit``).
      mask: ``(batch,)`` booleans marking real rows; padding rows count for nothing.

    Returns:
      ``(state, logs)``: the updated state (unchanged if the loss is not finite) and
      the batch's mean ``loss`` and metrics, with ``nonfinite`` (a bool).
    """
    step = supervised(model, loss, optimizer, metrics, loss_weights)
    if mask is None:
        mask = jnp.ones(jax.tree.leaves(x)[0].shape[:1], jnp.bool_)
    state, sums, nonfinite = guarded(step, state, (x, y), mask, jnp.bool_(True))
    return state, {**step.logs(sums), "nonfinite": nonfinite}


def guarded(step, state: TrainState, batch, mask, active, layout: Layout = NO_LAYOUT):
    """One masked step of ``step``: ``(state, sums, nonfinite)``.

    Nothing changes when ``active`` is False, when the batch is all padding, or when
    the step's loss is not finite (``nonfinite`` then says so). ``layout``
    (``fnlearn.sharding.Layout``) constrains the batch for data parallelism and keeps
    the state's leaves where they were placed (sharded parameters).
    """
    batch = layout.constrain_batch(batch)
    mask = mask.astype(jnp.bool_)

    def run(state):
        new_state, sums, finite = step.train(state, batch, mask, step_key(state))
        new_state = layout.constrain_state(new_state)
        keep = finite & active
        # A select, as optax.apply_if_finite does: the update is computed either way.
        state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_state, state)
        return state, sums, ~finite

    def skip(state):
        return state, step.zero_sums(state, batch), jnp.bool_(False)

    # A batch that is all padding (the tail of a chunked epoch) costs nothing.
    return jax.lax.cond(jnp.any(mask), run, skip, state)


def train_steps(step, state: TrainState, batches, index, mask, *, layout: Layout = NO_LAYOUT,
                stopped=False, progress: Callable | None = None, progress_every: int = 0):
    """Runs the batches ``index`` (rows of example positions into ``batches``) in one scan.

    ``batches`` is the ``(x, y)`` pytree of the data (leading axis the examples).
    Returns ``(state, sums, nonfinite_row)``: the step's summed logs, and the row of
    the first non-finite step (-1 if none), after which nothing is updated (nor at
    all when ``stopped``). With ``progress``, calls it on the host with the rows done
    and the running logs every ``progress_every`` rows (``jax.debug.callback``).
    """
    zero = step.zero_sums(state, jax.tree.map(lambda a: a[index[0]], batches))

    def body(carry, rows):
        state, sums, bad, row = carry
        idx, m = rows
        batch = layout.gather(batches, idx)
        state, step_sums, nonfinite = guarded(step, state, batch, m, bad < 0, layout)
        bad = jnp.where((bad < 0) & nonfinite, row, bad)
        sums = jax.tree.map(jnp.add, sums, step_sums)
        if progress is not None:
            jax.lax.cond((row + 1) % progress_every == 0,
                         lambda: jax.debug.callback(progress, row + 1, step.logs(sums)),
                         lambda: None)
        return (state, sums, bad, row + 1), None

    bad = jnp.where(stopped, jnp.int32(index.shape[0]), jnp.int32(-1))
    (state, sums, bad, _), _ = jax.lax.scan(body, (state, zero, bad, jnp.int32(0)),
                                            (index, mask))
    return state, sums, bad


def train_epoch(state: TrainState, x, y, *, model: Layer, loss: str | Callable | dict,
                optimizer: optax.GradientTransformation,
                metrics: Sequence[str | Callable] | dict = (), batch_size: int = 32,
                shuffle: bool = True, sharding=None, loss_weights=None,
                progress: Callable[[jax.Array, dict], None] | None = None,
                progress_every: int = 50) -> tuple[TrainState, dict[str, jax.Array]]:
    """One epoch over ``(x, y)`` in one ``lax.scan``: shuffled, padded and masked; jittable.

    Args:
      state: the ``TrainState``; its ``key`` and ``step`` choose the permutation.
      x, y: the whole training set, on the device.
      model, loss, optimizer, metrics, loss_weights: as for ``fit``.
      batch_size: examples per step; the last batch is padded and masked.
      shuffle: draw a permutation (else the data order).
      sharding: a ``NamedSharding`` for each batch (data parallel), or None.
      progress: called on the host as ``progress(steps_done, logs)`` every
        ``progress_every`` steps (through ``jax.debug.callback``), ``logs`` the running
        values. It is part of the compiled program: under ``jax.jit`` pass it as a static
        argument, and the same callable to reuse the compilation.
      progress_every: steps between ``progress`` calls.

    Returns:
      ``(state, logs)``: ``state.epoch`` is one more unless a loss was not finite, and
      ``logs`` has the epoch's mean ``loss`` and metrics by name, ``nonfinite_step``
      (-1, or the first step whose loss was not finite) and, when the optimizer has an
      epoch schedule (``fnlearn.optim.scale_by_epoch_schedule``), ``learning_rate``.
    """
    step = supervised(model, loss, optimizer, metrics, loss_weights)
    num_examples = jax.tree.leaves(x)[0].shape[0]
    state, sums, bad = epoch(step, state, (x, y), num_examples, batch_size, shuffle,
                             Layout(batch=sharding), progress=progress,
                             progress_every=progress_every)
    return state, {**step.logs(sums), **epoch_extras(state, bad)}


def epoch(step, state: TrainState, batches, num_examples: int, batch_size: int,
          shuffle: bool, layout: Layout = NO_LAYOUT, stopped=False, **progress):
    """A whole epoch of ``step`` over ``batches``: ``(state, sums, nonfinite_row)``."""
    index, mask = epoch_batches(state, num_examples, batch_size, shuffle)
    state, sums, bad = train_steps(step, state, batches, index, mask, layout=layout,
                                   stopped=stopped, **progress)
    return state._replace(epoch=state.epoch + (bad < 0)), sums, bad


def epoch_extras(state: TrainState, bad) -> dict[str, jax.Array]:
    """``nonfinite_step`` and, for an optimizer with an epoch schedule, ``learning_rate``."""
    extras = {"nonfinite_step": bad}
    learning_rate = optim.epoch_learning_rate(state.opt_state)
    if learning_rate is not None:
        extras["learning_rate"] = learning_rate
    return extras

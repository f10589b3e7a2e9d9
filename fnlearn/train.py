"""``fit``, ``evaluate`` and ``predict``: Keras's training API over ``fnlearn.loop``.

``fit`` checks its arguments, builds the step (the built-in ``Supervised`` one, or
the user's ``step=``), picks the feed (arrays placed on the device once, or a
source streamed in blocks) and hands both to the one epoch loop
(``fnlearn.loop.epochs``). See ``docs/training.md`` for the walk-through.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from fnlearn import cache, checks, optim
from fnlearn.data import sources
from fnlearn.loop import compiled, setup
from fnlearn.loop import epochs as epoch_loop
from fnlearn.loop.arrays import ArrayFeed, pad_rows, validation_arrays
from fnlearn.loop.hooks import Callback, Hooks
from fnlearn.loop.progress import Progress
from fnlearn.loop.stream import StreamFeed, probe
from fnlearn.nn.core import Layer
from fnlearn.nn.policy import Policy, policy_of, with_policy
from fnlearn.objectives import Custom, Supervised, supervised
from fnlearn.state import History, TrainState

EVAL_BATCH_SIZE = compiled.EVAL_BATCH_SIZE
EPOCHS_PER_CALL = compiled.EPOCHS_PER_CALL


def is_source(x) -> bool:
    """Whether ``x`` is a data source to stream (not arrays, nor a dict or tuple of them)."""
    if isinstance(x, sources.Stream):
        return True
    return not (isinstance(x, np.ndarray | jax.Array | list | tuple | dict)
                or np.isscalar(x) or hasattr(x, "__array__"))


def fit(model: Layer | None, x, y=None, *, loss: str | Callable | dict | None = None,
        optimizer: optax.GradientTransformation | str | None = None,
        metrics: Sequence[str | Callable] | dict = (), loss_weights=None, epochs: int = 1,
        batch_size: int | None = 32, shuffle: bool = True, validation_data: tuple | None = None,
        validation_split: float = 0.0, seed: int = 0, verbose: int = 1,
        callbacks: Sequence[Callback] = (), resume: bool = False, initial_params=None,
        initial_model_state=None, state: TrainState | None = None, mesh=None,
        param_sharding=None, progress_every: int = 50, step: Callable | None = None,
        eval_step: Callable | None = None,
        policy: str | Policy | None = None) -> tuple[TrainState, History]:
    """Trains ``model`` on ``(x, y)``, Keras style, with compiled epochs.

    Args:
      model: a ``Layer`` (``fnlearn.nn``); None with a custom ``step`` and a ``state``.
      x, y: inputs and labels, leading axis the examples: arrays, or dicts or tuples of
        them for a model with several inputs or outputs. Any real dtype: uint8 images
        stay uint8 on the device (normalize inside the model). ``jax.Array`` inputs stay
        where they are. ``y=None`` with arrays trains without labels (a custom ``step``);
        ``y=None`` with ``x`` a random-access data source (items ``(input, label)``) or
        ``fnlearn.sources.stream(...)`` streams blocks of batches to the device as
        training goes (``docs/data.md``).
      loss: a per-example loss ``loss(labels, predictions)`` or its name; for several
        outputs, a dict of them by output name (or one for all).
      optimizer: an Optax ``GradientTransformation`` (see ``fnlearn.optim``) or a Keras
        name (``"adam"``, ``"sgd"``, ``"rmsprop"``, with Keras's defaults).
      metrics: names (``"accuracy"``), per-example functions of ``(labels, predictions)``
        or ``fnlearn.losses.Metric`` values; a dict of lists by output for several outputs.
      loss_weights: a dict of floats by output: the loss is their weighted sum.
      epochs: the epoch to stop at (a total, as Keras's ``epochs``): a run restored at
        epoch 3 with ``epochs=5`` trains 2 more.
      batch_size: examples per step; ``None`` trains on the whole dataset each step.
      shuffle: reshuffle (on the device) every epoch.
      validation_data: ``(x_val, y_val)`` evaluated after every epoch (or a source,
        when ``x`` is one).
      validation_split: instead, hold out this last fraction of ``(x, y)`` (before
        shuffling, as Keras does).
      seed: determines initialization, shuffling and dropout; same seed, same bits.
      verbose: 0 silent, 1 a live progress bar per epoch, 2 one line per epoch.
      callbacks: ``fnlearn.Callback`` objects (``docs/training.md`` lists the hooks).
      resume: ask the callbacks (a checkpoint callback) to restore the latest saved run.
      initial_params: start from these parameters instead of initializing.
      initial_model_state: and from this model state (e.g. imported BatchNorm statistics).
      state: continue from this ``TrainState`` (its ``epoch`` counts toward ``epochs``).
      mesh: a ``jax.sharding.Mesh`` whose first axis (the data axis) splits every batch
        and the in-memory dataset; parameters and optimizer state are replicated unless
        ``param_sharding`` splits them (or ``state`` comes sharded: its placement is kept).
      param_sharding: a rule from parameter paths to ``PartitionSpec`` values over ``mesh``
        (``fnlearn.sharding``: ``fsdp()``, ``tensor_parallel()``, ``rules(...)``,
        ``combine(...)``); optimizer state follows its parameters.
      progress_every: steps between progress-bar updates with ``verbose=1``.
      step: your own step ``step(state, batch, key) -> (state, metrics)`` instead of the
        built-in one (``fnlearn.objectives.Custom``); ``loss`` and ``metrics`` are then unused.
      eval_step: with ``step``, ``eval_step(state, batch) -> metrics`` for validation.
      policy: a precision policy for the model (``"mixed_bfloat16"``: layers compute in
        bfloat16, parameters and optimizer state stay float32; ``fnlearn.nn.with_policy``);
        None trains the model as it is. Under ``"mixed_float16"`` (here or on the model)
        the optimizer is wrapped in ``fnlearn.optim.loss_scale`` unless it already is.

    Returns:
      ``(state, history)``: the final ``TrainState`` and a ``History``.
    """
    cache.enable_by_default()
    model = _with_policy(model, policy)
    checks.check_epochs(epochs, verbose)
    if isinstance(progress_every, bool) or not isinstance(progress_every, int) \
            or progress_every < 1:
        raise ValueError(f"progress_every must be a positive int, got {progress_every!r}")
    hooks = Hooks(callbacks)
    if step is None or optimizer is not None:
        optimizer = checks.resolve_optimizer(optimizer)
    if step is None and model is not None:
        optimizer = _loss_scaled(model, optimizer)
    streamed = y is None and is_source(x)
    if streamed:
        stream = sources.stream(x)
        if validation_split:
            if not isinstance(stream.source, sources.ArraySource):
                raise ValueError("validation_split needs arrays; with a source pass "
                                 "validation_data (a source or a pair of arrays)")
            x_train, y_train, validation_data = setup.split_validation(
                stream.source.x, stream.source.y, validation_data, validation_split)
            stream = dataclasses.replace(stream, source=sources.ArraySource(x_train, y_train))
        n = len(stream.source)
        example_x, example_y = probe(stream.source, n)
    else:
        x = checks.as_data("x", x)
        y = None if y is None else checks.as_data("y", y)
        x, y, validation_data = setup.split_validation(x, y, validation_data, validation_split)
        checks.check_xy(x, y)
        n = checks.count_examples("x", x)
        example_x, example_y = x, y
    batch_size = checks.check_batch_size(batch_size, n)
    placement = setup.Placement(mesh, param_sharding)
    placement.check_batch(batch_size)
    state, history = setup.start(model, example_x, optimizer, checks.check_seed(seed), state,
                                 (initial_params, initial_model_state), hooks, resume, epochs,
                                 placement)
    outputs = (checks.model_output(model, state.params, state.model_state, example_x)
               if step is None else None)
    train_step = setup.build_step(model, loss, optimizer, metrics, loss_weights, step,
                                  eval_step, outputs)
    setup.check_inputs(train_step, state, example_x, example_y)
    setup.warn_if_not_probabilities(train_step, state, example_x)
    validation = _validation(validation_data, train_step, state, placement, streamed,
                             stream if streamed else None)
    if streamed:
        feed = StreamFeed(train_step, stream, batch_size, shuffle, placement, state, validation)
    else:
        feed = ArrayFeed(train_step, placement.data((x, y)), n, batch_size, shuffle,
                         placement.layout(state), validation)
    zero_sums = feed.zero_sums(state)
    names = train_step.names() if isinstance(train_step, Supervised) else list(zero_sums)
    names += [f"val_{name}" for name in names] if validation is not None else []
    names += ["learning_rate"] if optim.epoch_learning_rate(state.opt_state) is not None else []
    hooks.set_params(epochs=epochs, steps=feed.steps, verbose=verbose, names=names)
    run = epoch_loop.Run(feed, hooks, Progress(verbose, feed.steps), progress_every,
                         epoch_loop.sums_codec(zero_sums), names)
    state = epoch_loop.train(run, state, history, epochs)
    return hooks.train_end(state, history), history


def _validation(validation_data, step, state, placement, streamed: bool, stream):
    """Validation data, checked and placed: device arrays, or a source to stream."""
    if validation_data is None:
        return None
    if isinstance(validation_data, tuple | list) and len(validation_data) == 2 \
            and not is_source(validation_data[0]):
        val_x = checks.as_data("validation x", validation_data[0])
        val_y = None if validation_data[1] is None else checks.as_data("validation y",
                                                                       validation_data[1])
        checks.check_xy(val_x, val_y, "validation x")
        setup.check_inputs(step, state, val_x, val_y, "validation x")
        return validation_arrays((val_x, val_y), placement.data, placement.devices)
    if not streamed:
        raise ValueError("validation_data must be a pair (x_val, y_val) of arrays")
    # The training source's keys serve a validation source whose items are dicts too.
    keys = stream.source.keys if isinstance(stream.source, sources.KeyedSource) else None
    dict_items = (not isinstance(validation_data, sources.Stream)
                  and hasattr(validation_data, "__getitem__") and len(validation_data) > 0
                  and isinstance(validation_data[0], dict))
    val = sources.stream(validation_data, keys=keys if dict_items else None).source
    x, y = probe(val, len(val))
    setup.check_inputs(step, state, x, y, "validation x")
    return val


def _with_policy(model: Layer | None, policy) -> Layer | None:
    """``model`` under ``policy`` (None: as it is)."""
    if policy is None:
        return model
    if model is None:
        raise ValueError("policy= needs a model; a custom step without one computes in the "
                         "dtypes it chooses")
    return with_policy(model, policy)


def _loss_scaled(model: Layer, optimizer):
    """``optimizer`` wrapped in ``optim.loss_scale`` for a float16 policy (Keras's compile)."""
    # Not a Layer (a Flax module, say): left for the model check to name.
    policy = policy_of(model) if isinstance(model, Layer) else None
    if policy is None or not policy.needs_loss_scale or optim.is_loss_scaled(optimizer):
        return optimizer
    return optim.loss_scale(optimizer)


def _eval_size(n: int, batch_size) -> tuple[int, int]:
    """``(chunk, padded)``: examples per compiled chunk, and the padded length (a bucket)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    chunk = min(batch_size, compiled.bucket(n, 8))
    return chunk, compiled.bucket(n, chunk)


def evaluate(model: Layer | None, params, x, y=None, *, loss: str | Callable | dict | None = None,
             metrics: Sequence[str | Callable] | dict = (), batch_size: int = EVAL_BATCH_SIZE,
             model_state=None, loss_weights=None, eval_step: Callable | None = None,
             state: TrainState | None = None,
             policy: str | Policy | None = None) -> dict[str, float]:
    """Mean loss and metrics of ``model`` on ``(x, y)`` (Keras ``evaluate``), one XLA call.

    Args:
      model, params: the model and its parameters (``state.params``).
      x, y: inputs and labels (dicts or tuples of arrays for several inputs or outputs).
      loss, metrics, loss_weights: as for ``fit``.
      batch_size: examples per compiled chunk. The data is padded to a whole number of
        chunks with the example count a runtime value, so 499 and 500 examples share
        one compiled program.
      model_state: the model's non-trainable state (``state.model_state``), if it has any.
      eval_step: your own ``eval_step(state, batch) -> metrics`` (with ``state=``) instead
        of ``loss`` and ``metrics``.
      state: the ``TrainState`` an ``eval_step`` evaluates.
      policy: a precision policy to evaluate the model under, as for ``fit``.

    Returns:
      ``{"loss": ..., "<metric>": ...}`` (or the ``eval_step``'s metrics).
    """
    cache.enable_by_default()
    model = _with_policy(model, policy) if eval_step is None else model
    x = checks.as_data("x", x)
    y = None if y is None else checks.as_data("y", y)
    checks.check_xy(x, y)
    n = checks.count_examples("x", x)
    if eval_step is not None:
        if not isinstance(state, TrainState):
            raise TypeError("evaluate(eval_step=...) needs state= (the TrainState to evaluate)")
        step = Custom(eval_step, eval_step)
    else:
        model_state = {} if model_state is None else model_state
        out = checks.model_output(model, params, model_state, x)
        step = supervised(model, loss, None, metrics, loss_weights, out)
        state = TrainState(params, None, model_state, np.int32(0), np.int32(0), None)
        checks.check_losses(step.losses, y, out)
    chunk, padded = _eval_size(n, batch_size)
    batches = jax.tree.map(lambda a: pad_rows(a, padded), (x, y))
    zeros = compiled.evaluation_zeros(step, state, batches)
    _, logs = compiled.evaluate(state, batches, np.int32(n), zeros, step=step, chunk=chunk)
    logs = jax.device_get(logs)
    order = step.names() if isinstance(step, Supervised) else sorted(logs)
    return {name: float(logs[name]) for name in order}


def predict(model: Layer, params, x, *, batch_size: int = EVAL_BATCH_SIZE,
            model_state=None, policy: str | Policy | None = None) -> Any:
    """Model outputs for every example of ``x`` (inference mode), as NumPy arrays.

    ``x`` may be a dict or tuple of arrays (several inputs); the result has the model's
    output structure. Padded to a whole number of chunks as ``evaluate`` is. ``policy``
    runs the model under a precision policy, as for ``fit`` (outputs come back float32).
    """
    cache.enable_by_default()
    model = _with_policy(model, policy)
    x = checks.as_data("x", x)
    n = checks.count_examples("x", x)
    if n == 0:
        raise ValueError("x is empty: nothing to predict")
    model_state = {} if model_state is None else model_state
    checks.model_output(model, params, model_state, x)
    chunk, padded = _eval_size(n, batch_size)
    out = compiled.predict(params, model_state, jax.tree.map(lambda a: pad_rows(a, padded), x),
                           model=model, chunk=chunk)
    return jax.tree.map(lambda o: np.asarray(o)[:n], out)

"""``fit``, ``evaluate`` and ``predict``: Keras's training API as thin host drivers.

The compiled work lives in ``fnlearn.step``; this module checks arguments
(``fnlearn.checks``), places data on the device, runs callbacks and keeps the
history. The dataset is copied to the device once, in its own dtype (uint8
images stay uint8). When nothing needs the host between epochs (``verbose`` 0,
no per-epoch callbacks) up to ``EPOCHS_PER_CALL`` epochs run as one XLA call;
the epoch count is a runtime value of that program, so ``fit(epochs=1)`` and
``fit(epochs=30)`` share one compilation. ``verbose=1`` runs each epoch in chunks
of ``progress_every`` steps and moves the progress bar between them.

See ``docs/training.md`` for the walk-through.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnlearn import cache, checks, optim
from fnlearn import losses as losses_lib
from fnlearn import step as step_lib
from fnlearn.nn.core import Layer, init_with_state
from fnlearn.state import History, NonFiniteLossError, TrainState

EVAL_BATCH_SIZE = step_lib.EVAL_BATCH_SIZE
# Epochs one compiled call can run when the host has nothing to do between them;
# the per-epoch logs of a call are buffers of this length.
EPOCHS_PER_CALL = 1024


def _train_epochs(state, x, y, val_x, val_y, num_epochs, *, model, loss_fn, metric_fns,
                  optimizer, batch_size, shuffle, sharding):
    """Runs ``num_epochs`` (a runtime value, at most ``EPOCHS_PER_CALL``) epochs in one program."""
    def one_epoch(state, stopped=False):
        state, logs = step_lib._epoch(state, x, y, model=model, loss_fn=loss_fn,
                                      metric_fns=metric_fns, optimizer=optimizer,
                                      batch_size=batch_size, shuffle=shuffle, sharding=sharding,
                                      stopped=stopped)
        if val_x is not None:
            logs["val_loss"], logs["val_metrics"] = step_lib.evaluate_arrays(
                state.params, state.model_state, val_x, val_y, model=model, loss_fn=loss_fn,
                metric_fns=metric_fns)
        return state, logs

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


_STATIC = ("model", "loss_fn", "metric_fns", "optimizer", "batch_size", "shuffle", "sharding")
_compiled_train_epochs = jax.jit(_train_epochs, static_argnames=_STATIC)


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _compiled_chunks(state, num_examples, batch_size, shuffle, rows):
    """The epoch's batches padded with empty ones to ``rows`` (a whole number of chunks)."""
    index, mask = step_lib.epoch_batches(state, num_examples, batch_size, shuffle)
    pad = ((0, rows - index.shape[0]), (0, 0))
    return jnp.pad(index, pad), jnp.pad(mask, pad)


_compiled_train_steps = jax.jit(step_lib.train_steps, static_argnames=_STATIC[:4] + ("sharding",))
_compiled_evaluate = jax.jit(step_lib.evaluate_arrays,
                             static_argnames=("model", "loss_fn", "metric_fns", "batch_size"))
_compiled_predict = jax.jit(step_lib.predict_arrays, static_argnames=("model", "batch_size"))


@partial(jax.jit, static_argnames=("model", "optimizer", "input_shape"))
def _compiled_init_state(seed, params, model_state, *, model, optimizer, input_shape):
    # One compiled program instead of a dispatch (and a small compilation) per
    # random draw and optimizer buffer.
    init_key, run_key = jax.random.split(jax.random.key(seed))
    _, fresh_params, fresh_state = init_with_state(model, init_key, input_shape)
    params = fresh_params if params is None else params
    model_state = fresh_state if model_state is None else model_state
    return TrainState(params, optimizer.init(params), model_state, jnp.int32(0), jnp.int32(0),
                      jax.random.key_data(run_key))


def init_state(model: Layer, optimizer: optax.GradientTransformation | str,
               input_shape: Sequence[int], *, seed: int = 0, params=None,
               model_state=None) -> TrainState:
    """A fresh ``TrainState``: parameters and model state from ``model.init``, optimizer state.

    Args:
      model: the model.
      optimizer: an Optax optimizer (or a Keras name: ``"adam"``, ``"sgd"``, ``"rmsprop"``).
      input_shape: per-example input shape.
      seed: seeds both the initialization and the run's base key.
      params: start from these parameters instead of initializing.
      model_state: start from this model state (BatchNorm statistics) instead.
    """
    cache.enable_by_default()
    optimizer = checks.resolve_optimizer(optimizer)
    if params is not None:
        checks.check_params(params, "params")
        params = jax.tree.map(lambda a: jnp.array(a, copy=True), params)
    if model_state is not None:
        model_state = jax.tree.map(lambda a: jnp.array(a, copy=True), model_state)
    return _compiled_init_state(checks.check_seed(seed), params, model_state, model=model,
                                optimizer=optimizer, input_shape=tuple(input_shape))


def _metrics(metrics) -> tuple[tuple[str, ...], tuple[Callable, ...]]:
    pairs = [losses_lib.get_metric(m) for m in metrics]
    return tuple(n for n, _ in pairs), tuple(f for _, f in pairs)


def _split_validation(x, y, validation_data, validation_split):
    if validation_split and validation_data is not None:
        raise ValueError("pass validation_data or validation_split, not both")
    if validation_split:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {validation_split!r}")
        # Keras takes the last fraction of the data, before any shuffling.
        cut = int(len(x) * (1.0 - validation_split))
        return x[:cut], y[:cut], (x[cut:], y[cut:])
    if validation_data is not None and (not isinstance(validation_data, tuple | list)
                                        or len(validation_data) != 2):
        raise ValueError("validation_data must be a pair (x_val, y_val)")
    return x, y, validation_data


def _place(mesh):
    """Puts arrays on the device (replicated over ``mesh``), and the batch sharding."""
    if mesh is None:
        return jnp.asarray, None
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

    # The step constrains the batch and leaves the rest to XLA's sharding
    # propagation, which needs Auto axes; jax.make_mesh defaults to Explicit ones.
    mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)
    replicated = NamedSharding(mesh, PartitionSpec())
    return partial(jax.device_put, device=replicated), NamedSharding(
        mesh, PartitionSpec(mesh.axis_names[0]))


def _check_mesh(sharding, batch_size: int) -> None:
    if sharding is None:
        return
    axis = sharding.spec[0]
    devices = sharding.mesh.shape[axis]
    if batch_size % devices:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {devices} devices of "
                         f"mesh axis {axis!r}; the global batch must split evenly")


def _start(model, x, optimizer, seed, state, initial, callbacks, resume, epochs):
    """The state to start from: given, restored by a callback, or fresh; and the history."""
    initial_params, initial_model_state = initial
    if state is not None and initial_params is not None:
        raise ValueError("pass either state (to continue a run) or initial_params, not both")
    if resume and not any(hasattr(c, "on_train_begin") for c in callbacks):
        raise ValueError("resume=True needs a callback that restores a run, e.g. "
                         "callbacks=[fnlearn.ModelCheckpoint(directory)]")
    if state is None:
        if initial_params is not None:
            checks.check_params(initial_params, "initial_params")
        try:
            state = init_state(model, optimizer, x.shape[1:], seed=seed, params=initial_params,
                               model_state=initial_model_state)
        except Exception as error:  # noqa: BLE001 - re-raised with the shape that caused it
            raise ValueError(f"model cannot be initialized for inputs of per-example shape "
                             f"{x.shape[1:]} (x has shape {x.shape}): {error}") from error
    history = History()
    for callback in callbacks:
        if hasattr(callback, "on_train_begin"):
            restored = callback.on_train_begin(state, history, resume)
            if restored is not None:
                state, history = restored
    if int(state.epoch) >= epochs > 0 or (epochs == 0 and int(state.epoch) > 0):
        at = int(state.epoch)
        warnings.warn(f"the run is already at epoch {at} and epochs={epochs} is the epoch to "
                      f"stop at (a total, as in Keras), so nothing is trained; pass "
                      f"epochs={at + max(epochs, 1)} to train {max(epochs, 1)} more",
                      UserWarning, stacklevel=3)
    return state, history


def fit(model: Layer, x, y, *, loss: str | Callable,
        optimizer: optax.GradientTransformation | str, metrics: Sequence[str | Callable] = (),
        epochs: int = 1, batch_size: int | None = 32, shuffle: bool = True,
        validation_data: tuple | None = None, validation_split: float = 0.0, seed: int = 0,
        verbose: int = 1, callbacks: Sequence[Any] = (), resume: bool = False,
        initial_params=None, initial_model_state=None, state: TrainState | None = None,
        mesh=None, progress_every: int = 50) -> tuple[TrainState, History]:
    """Trains ``model`` on ``(x, y)``, Keras style, with compiled epochs (``fnlearn.step``).

    Args:
      model: a ``Layer`` (``fnlearn.nn``), or anything with the same ``init``/``apply``.
      x, y: inputs and labels, leading axis the examples. Any numeric dtype: uint8
        images stay uint8 on the device (normalize inside the model); float64 is cast
        to float32 on the device.
        Or ``y=None`` and ``x`` a random-access data source (items ``(input, label)``)
        or ``fnlearn.sources.stream(...)``: blocks of batches are read and sent to the
        device as training goes (``fnlearn.stream_fit``, ``docs/data.md``).
      loss: a per-example loss ``loss(labels, predictions)`` or its name.
      optimizer: an Optax ``GradientTransformation`` (see ``fnlearn.optim``) or a Keras
        name (``"adam"``, ``"sgd"``, ``"rmsprop"``, with Keras's defaults).
      metrics: names (``"accuracy"``) or per-example functions of ``(labels, predictions)``.
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
      callbacks: objects with any of ``on_train_begin(state, history, resume)`` (may
        return a ``(state, history)`` to start from), ``on_epoch_end(epoch, state, logs,
        history)`` (return True to stop) and ``on_train_end(state, history)`` (may return
        the state that ``fit`` returns instead).
      resume: ask the callbacks (a checkpoint callback) to restore the latest saved run.
      initial_params: start from these parameters instead of initializing.
      initial_model_state: and from this model state (e.g. imported BatchNorm statistics).
      state: continue from this ``TrainState`` (its ``epoch`` counts toward ``epochs``).
      mesh: a ``jax.sharding.Mesh`` whose first axis shards the batch (data parallel);
        parameters and optimizer state are replicated.
      progress_every: steps between progress-bar updates with ``verbose=1``.

    Returns:
      ``(state, history)``: the final ``TrainState`` and a ``History``.
    """
    if y is None or any(getattr(c, "save_every_steps", None) for c in callbacks):
        # A data source (or checkpoints within epochs): the streaming driver.
        from fnlearn import sources, stream_fit

        return stream_fit.fit_stream(
            model, x if y is None else sources.ArraySource(x, y), loss=loss,
            optimizer=optimizer, metrics=metrics, epochs=epochs, batch_size=batch_size,
            shuffle=shuffle, validation_data=validation_data, validation_split=validation_split,
            seed=seed, verbose=verbose, callbacks=callbacks, resume=resume,
            initial_params=initial_params, initial_model_state=initial_model_state, state=state,
            mesh=mesh, progress_every=progress_every)
    cache.enable_by_default()
    checks.check_epochs(epochs, verbose)
    x, y = checks.as_host_array("x", x), checks.as_host_array("y", y)
    x, y, validation_data = _split_validation(x, y, validation_data, validation_split)
    checks.check_xy(x, y)
    batch_size = checks.check_batch_size(batch_size, len(x))
    loss_fn = losses_lib.get_loss(loss)
    names, metric_fns = _metrics(metrics)
    optimizer = checks.resolve_optimizer(optimizer)
    state, history = _start(model, x, optimizer, checks.check_seed(seed), state,
                            (initial_params, initial_model_state), callbacks, resume, epochs)
    checks.check_model_input(model, state.params, state.model_state, x, loss_fn, y)
    checks.warn_if_not_probabilities(model, state.params, state.model_state, x, loss_fn)
    val = _validation(model, state, validation_data, loss_fn)
    place, sharding = _place(mesh)
    _check_mesh(sharding, batch_size)
    data = (place(x), place(y), *(place(v) if v is not None else None for v in val))
    state = jax.tree.map(place, state)
    run = _Run(dict(model=model, loss_fn=loss_fn, metric_fns=metric_fns, optimizer=optimizer,
                    batch_size=batch_size, shuffle=shuffle, sharding=sharding), names, data,
               math.ceil(len(x) / batch_size), verbose, progress_every)
    per_epoch = verbose > 0 or any(hasattr(c, "on_epoch_end") for c in callbacks)
    epoch = int(state.epoch)
    while epoch < epochs:
        count = 1 if per_epoch else min(epochs - epoch, EPOCHS_PER_CALL)
        state, epoch_logs, seconds = run.epochs(state, epoch, epochs, count)
        for logs in epoch_logs:
            history.append(epoch, logs, seconds)
            run.report(logs, seconds)
            stop = [bool(c.on_epoch_end(epoch, state, logs, history)) for c in callbacks
                    if hasattr(c, "on_epoch_end")]
            epoch += 1
            if any(stop):
                epochs = epoch
    for callback in callbacks:
        # EarlyStopping(restore_best_weights=True) hands back the best state here.
        if hasattr(callback, "on_train_end"):
            state = callback.on_train_end(state, history) or state
    return state, history


def _validation(model, state, validation_data, loss_fn):
    if validation_data is None:
        return None, None
    val_x = checks.as_host_array("validation x", validation_data[0])
    val_y = checks.as_host_array("validation y", validation_data[1])
    checks.check_xy(val_x, val_y, "validation x")
    checks.check_model_input(model, state.params, state.model_state, val_x, loss_fn, val_y)
    return val_x, val_y


def _format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{name}: {value:.4f}" for name, value in logs.items())


class _Run:
    """One ``fit`` call's compiled configuration, device data and output (host side only)."""

    def __init__(self, static, names, data, steps, verbose, progress_every):
        self.static, self.names, self.data, self.steps = static, names, data, steps
        self.verbose, self.progress_every = verbose, progress_every

    def logs(self, values: dict, i: int | None = None) -> dict[str, float]:
        pick = (lambda v: float(v)) if i is None else (lambda v: float(v[i]))
        logs = {"loss": pick(values["loss"])}
        logs.update({n: pick(v) for n, v in zip(self.names, values["metrics"])})
        if "val_loss" in values:
            logs["val_loss"] = pick(values["val_loss"])
            logs.update({f"val_{n}": pick(v) for n, v in zip(self.names, values["val_metrics"])})
        if "learning_rate" in values:
            logs["learning_rate"] = pick(values["learning_rate"])
        return logs

    def epochs(self, state, epoch, epochs, count):
        """Runs ``count`` epochs; returns the state, each epoch's logs and seconds per epoch."""
        if self.verbose:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
        started = time.perf_counter()
        if self.verbose == 1:
            state, values = self._epoch_with_bar(state)
            stacked = jax.tree.map(lambda v: np.asarray(v)[None], values)
        else:
            x, y, val_x, val_y = self.data
            state, stacked = _compiled_train_epochs(state, x, y, val_x, val_y, np.int32(count),
                                                    **self.static)
            stacked = jax.device_get(stacked)
        seconds = (time.perf_counter() - started) / count
        out = []
        for i in range(count):
            bad = int(stacked["nonfinite_step"][i])
            if bad >= 0:
                raise NonFiniteLossError(
                    f"loss became NaN or inf at epoch {epoch + i + 1}, step {bad + 1} of "
                    f"{self.steps}; training stopped: the error's .state (and any checkpoint) "
                    "is from before that step. Lower the learning rate or check the data for "
                    "extreme values.", state)
            out.append(self.logs(stacked, i))
        return state, out, seconds

    def _epoch_with_bar(self, state):
        from tqdm.auto import tqdm

        x, y, val_x, val_y = self.data
        static = self.static
        every = max(1, min(self.progress_every, self.steps))
        chunks = math.ceil(self.steps / every)
        index, mask = _compiled_chunks(state, len(x), static["batch_size"], static["shuffle"],
                                       chunks * every)
        sums = bad = None
        self.bar = tqdm(total=self.steps, unit="step", leave=True, dynamic_ncols=True)
        for c in range(chunks):
            rows = slice(c * every, (c + 1) * every)
            state, chunk_sums, chunk_bad = _compiled_train_steps(
                state, x, y, index[rows], mask[rows], **{k: static[k] for k in
                                                          ("model", "loss_fn", "metric_fns",
                                                           "optimizer", "sharding")})
            chunk_sums, chunk_bad = jax.device_get((chunk_sums, chunk_bad))
            sums = chunk_sums if sums is None else jax.tree.map(np.add, sums, chunk_sums)
            if chunk_bad >= 0:
                bad = c * every + int(chunk_bad)
                break
            means = step_lib._means(sums)
            self.bar.n = min((c + 1) * every, self.steps)
            self.bar.set_postfix({"loss": f"{float(means['loss']):.4f}", **{
                n: f"{float(v):.4f}" for n, v in zip(self.names, means["metrics"])}},
                refresh=True)
        values = {**step_lib._means(sums), "nonfinite_step": -1 if bad is None else bad}
        learning_rate = optim.epoch_learning_rate(state.opt_state)
        if learning_rate is not None:
            values["learning_rate"] = learning_rate
        if bad is None:
            state = state._replace(epoch=state.epoch + 1)
            if val_x is not None:
                values["val_loss"], values["val_metrics"] = _compiled_evaluate(
                    state.params, state.model_state, val_x, val_y, model=static["model"],
                    loss_fn=static["loss_fn"], metric_fns=static["metric_fns"])
        else:
            self.bar.close()
        return state, values

    def report(self, logs: dict[str, float], seconds: float) -> None:
        if self.verbose == 1:
            self.bar.n = self.steps
            self.bar.set_postfix_str(_format_logs(logs), refresh=True)
            self.bar.close()
        elif self.verbose == 2:
            per_step = seconds / self.steps
            unit = f"{per_step * 1e3:.0f}ms" if per_step >= 1e-3 else f"{per_step * 1e6:.0f}us"
            print(f"{self.steps}/{self.steps} - {seconds:.1f}s - {unit}/step - "
                  f"{_format_logs(logs)}", flush=True)


def evaluate(model: Layer, params, x, y, *, loss: str | Callable,
             metrics: Sequence[str | Callable] = (), batch_size: int = EVAL_BATCH_SIZE,
             model_state=None) -> dict[str, float]:
    """Mean loss and metrics of ``model`` on ``(x, y)`` (Keras ``evaluate``), one XLA call.

    Args:
      model, params: the model and its parameters (``state.params``).
      x, y: inputs and labels.
      loss, metrics: as for ``fit``.
      batch_size: examples per compiled chunk.
      model_state: the model's non-trainable state (``state.model_state``), if it has any.

    Returns:
      ``{"loss": ..., "<metric>": ...}``.
    """
    cache.enable_by_default()
    x, y = checks.as_host_array("x", x), checks.as_host_array("y", y)
    checks.check_xy(x, y)
    loss_fn = losses_lib.get_loss(loss)
    model_state = {} if model_state is None else model_state
    checks.check_model_input(model, params, model_state, x, loss_fn, y)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    names, metric_fns = _metrics(metrics)
    value, metric_values = _compiled_evaluate(
        params, model_state, jnp.asarray(x), jnp.asarray(y), model=model, loss_fn=loss_fn,
        metric_fns=metric_fns, batch_size=min(batch_size, len(x)))
    return {"loss": float(value), **{n: float(v) for n, v in zip(names, metric_values)}}


def predict(model: Layer, params, x, *, batch_size: int = EVAL_BATCH_SIZE,
            model_state=None) -> np.ndarray:
    """Model outputs for every example of ``x`` (inference mode), as a NumPy array."""
    cache.enable_by_default()
    x = checks.as_host_array("x", x)
    if len(x) == 0:
        raise ValueError("x is empty: nothing to predict")
    model_state = {} if model_state is None else model_state
    checks.check_model_input(model, params, model_state, x)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return np.asarray(_compiled_predict(params, model_state, jnp.asarray(x), model=model,
                                        batch_size=min(batch_size, len(x))))


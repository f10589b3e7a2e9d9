"""``fit``, ``evaluate`` and ``predict``: Keras's training API as compiled pure functions.

The design choice that everything here follows: one epoch is one XLA call.
The dataset is copied to the device once, in its own dtype (uint8 images stay
uint8); each epoch draws its permutation on the device and runs every step
inside ``jax.lax.scan``, so no Python runs between steps. When nothing needs
the host between epochs (no progress output, no callbacks) the whole run is one
call. The last partial batch is padded to the batch size and masked, so every
epoch has one static shape: one compilation, every example counted once.

See ``docs/training.md`` for the walk-through.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnlearn import losses as losses_lib
from fnlearn.nn import Layer

# Examples per compiled chunk in evaluate/predict and in per-epoch validation:
# big enough to keep the matrix units busy, small enough to bound memory.
EVAL_BATCH_SIZE = 1024


class TrainState(NamedTuple):
    """Everything that determines the rest of a training run; a pytree.

    Attributes:
      params: model parameters.
      opt_state: the Optax optimizer state.
      step: optimizer updates applied so far (int32 scalar).
      epoch: epochs completed (int32 scalar).
      key: raw ``uint32`` data of the run's base PRNG key (``jax.random.key_data``);
        every epoch's shuffle and dropout keys are folded from it and the epoch number,
        so a run resumed from a saved state continues exactly as if never stopped.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    epoch: jax.Array
    key: jax.Array


@dataclass
class History:
    """What ``fit`` returns besides the state, as Keras's ``History``.

    Attributes:
      history: per-epoch values: ``loss``, each metric, and ``val_``-prefixed ones.
      epoch: the epoch numbers (0-based) the values belong to.
      epoch_seconds: wall time of each epoch as seen from the host (the first
        includes compilation); when a whole run is one call, its time is spread evenly.
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    def append(self, epoch: int, logs: dict[str, float], seconds: float) -> None:
        self.epoch.append(epoch)
        self.epoch_seconds.append(seconds)
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss.

    Attributes:
      state: the ``TrainState`` just before the step whose loss was not finite.
    """

    def __init__(self, message: str, state: TrainState | None = None):
        super().__init__(message)
        self.state = state


def _resolve_loss(loss: str | Callable) -> Callable:
    if callable(loss):
        return loss
    named = {"sparse_categorical_crossentropy": losses_lib.sparse_categorical_crossentropy,
             "mse": losses_lib.mean_squared_error,
             "mean_squared_error": losses_lib.mean_squared_error}
    if loss not in named:
        raise ValueError(f"unknown loss {loss!r}; known: {sorted(named)} or pass a function")
    return named[loss]


def _as_host_array(name: str, value) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as error:
        raise ValueError(f"{name} cannot be converted to an array (lists of unequal "
                         f"lengths?): {error}") from error
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                     or array.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real numbers, got dtype {array.dtype}")
    if array.ndim == 0:
        raise ValueError(f"{name} must have a leading example axis, got a scalar")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{name} contains NaN or inf (first at index {bad})")
    return array


def _check_xy(x: np.ndarray, y: np.ndarray, name: str = "x") -> None:
    if len(x) == 0:
        raise ValueError(f"{name} is empty: nothing to train or evaluate on")
    if len(x) != len(y):
        raise ValueError(f"{name} has {len(x)} examples but its labels have {len(y)}")


def _check_model_input(model: Layer, params, x: np.ndarray, loss_fn, y: np.ndarray | None):
    """Runs the model and loss abstractly on one example: shape errors surface here, early."""
    example = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    try:
        out = jax.eval_shape(lambda p, xb: model.apply(p, xb), params, example)
    except Exception as error:  # noqa: BLE001 - re-raised with the shapes that caused it
        raise ValueError(
            f"model cannot be applied to inputs of per-example shape {x.shape[1:]} "
            f"(dtype {x.dtype}): {error}") from error
    if y is not None and loss_fn is not None:
        if loss_fn is losses_lib.sparse_categorical_crossentropy or getattr(
                loss_fn, "func", None) is losses_lib.sparse_categorical_crossentropy:
            losses_lib.check_sparse_labels(y, (len(y), *out.shape[1:]), out.shape[-1])
        label = jax.ShapeDtypeStruct((1, *y.shape[1:]), y.dtype)
        try:
            jax.eval_shape(loss_fn, label, out)
        except Exception as error:  # noqa: BLE001
            raise ValueError(
                f"loss cannot compare labels of per-example shape {y.shape[1:]} with model "
                f"outputs of per-example shape {out.shape[1:]}: {error}") from error
    return out


def _batch_plan(num_examples: int, batch_size: int) -> tuple[int, int]:
    steps = math.ceil(num_examples / batch_size)
    return steps, steps * batch_size


def _masked_stats(loss_fn, metric_fns, params, model, xb, yb, mask, key, train):
    """Masked sums of the loss and metrics over one batch, and the mean loss to differentiate."""
    preds = model.apply(params, xb, key=key, train=train)
    weights = mask.astype(jnp.float32)
    count = jnp.sum(weights)
    per_example = loss_fn(yb, preds)
    loss_sum = jnp.sum(per_example * weights)
    metric_sums = tuple(jnp.sum(fn(yb, preds) * weights) for fn in metric_fns)
    return loss_sum / jnp.maximum(count, 1.0), (loss_sum, metric_sums, count)


def _evaluate_arrays(model, loss_fn, metric_fns, params, x, y, batch_size):
    """Masked loss and metric means over ``x``, chunked by ``batch_size`` inside one scan."""
    n = x.shape[0]
    steps, padded = _batch_plan(n, batch_size)
    index = jnp.arange(padded)
    mask = (index < n).reshape(steps, batch_size)
    index = jnp.where(index < n, index, 0).reshape(steps, batch_size)

    def body(totals, batch):
        idx, m = batch
        _, (loss_sum, metric_sums, count) = _masked_stats(
            loss_fn, metric_fns, params, model, x[idx], y[idx], m, None, False)
        return jax.tree.map(jnp.add, totals, (loss_sum, metric_sums, count)), None

    zero = jnp.zeros((), jnp.float32)
    totals, _ = jax.lax.scan(body, (zero, tuple(zero for _ in metric_fns), zero), (index, mask))
    loss_sum, metric_sums, count = totals
    return loss_sum / count, tuple(s / count for s in metric_sums)


def _train_epochs(state: TrainState, x, y, val_x, val_y, *, model, loss_fn, metric_fns,
                  optimizer, batch_size, shuffle, num_epochs, sharding, progress_every):
    """Runs ``num_epochs`` epochs; returns the new state and per-epoch logs (stacked)."""
    n = x.shape[0]
    steps, padded = _batch_plan(n, batch_size)
    base_key = jax.random.wrap_key_data(state.key)

    def one_epoch(carry, _):
        state, stopped = carry
        epoch_key = jax.random.fold_in(base_key, state.epoch)
        shuffle_key, dropout_key = jax.random.split(epoch_key)
        order = jax.random.permutation(shuffle_key, n) if shuffle else jnp.arange(n)
        position = jnp.arange(padded)
        mask = (position < n).reshape(steps, batch_size)
        index = jnp.concatenate([order, jnp.zeros(padded - n, order.dtype)])
        index = index.reshape(steps, batch_size)

        def one_step(carry, batch):
            params, opt_state, totals, first_bad = carry
            idx, m, s = batch
            xb, yb = x[idx], y[idx]
            if sharding is not None:
                xb = jax.lax.with_sharding_constraint(xb, sharding)
                yb = jax.lax.with_sharding_constraint(yb, sharding)
            key = jax.random.fold_in(dropout_key, s)
            grad_fn = jax.value_and_grad(_masked_stats, argnums=2, has_aux=True)
            (mean_loss, stats), grads = grad_fn(
                loss_fn, metric_fns, params, model, xb, yb, m, key, True)
            # terminate_on_nan: from the first non-finite loss on, stop updating, so the
            # state handed back is the last good one and the host can name the step.
            ok = jnp.isfinite(mean_loss) & (first_bad < 0)

            def update(params, opt_state):
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state

            params, opt_state = jax.lax.cond(ok, update, lambda p, o: (p, o), params, opt_state)
            first_bad = jnp.where(ok | (first_bad >= 0), first_bad, s)
            totals = jax.tree.map(jnp.add, totals, stats)
            if progress_every:
                jax.lax.cond((s + 1) % progress_every == 0,
                             lambda: jax.debug.callback(_report_progress, s + 1, *totals),
                             lambda: None)
            return (params, opt_state, totals, first_bad), None

        zero = jnp.zeros((), jnp.float32)
        totals = (zero, tuple(zero for _ in metric_fns), zero)
        # After a non-finite loss, the epochs still left in this call update nothing.
        carry = (state.params, state.opt_state, totals, jnp.where(stopped, 0, -1))
        carry, _ = jax.lax.scan(one_step, carry, (index, mask, jnp.arange(steps)))
        params, opt_state, (loss_sum, metric_sums, count), first_bad = carry
        good_steps = jnp.where(first_bad >= 0, first_bad, steps)
        logs = {"loss": loss_sum / count,
                "metrics": tuple(s / count for s in metric_sums),
                "first_bad_step": first_bad}
        if val_x is not None:
            val_loss, val_metrics = _evaluate_arrays(
                model, loss_fn, metric_fns, params, val_x, val_y, EVAL_BATCH_SIZE)
            logs["val_loss"], logs["val_metrics"] = val_loss, val_metrics
        state = TrainState(params, opt_state, state.step + good_steps,
                           state.epoch + (first_bad < 0), state.key)
        return (state, first_bad >= 0), logs

    (state, _), logs = jax.lax.scan(one_epoch, (state, jnp.bool_(False)), None,
                                    length=num_epochs)
    return state, logs


_STATIC = ("model", "loss_fn", "metric_fns", "optimizer", "batch_size", "shuffle",
           "num_epochs", "sharding", "progress_every")
_compiled_train_epochs = jax.jit(_train_epochs, static_argnames=_STATIC)

# The progress bar that the compiled epoch's host callback updates. The compiled
# function outlives any one fit call, so it looks the bar up here when it fires.
_progress: dict[str, Any] = {}


def _report_progress(step, loss_sum, metric_sums, count):
    bar = _progress.get("bar")
    if bar is None:
        return
    count = float(count)
    postfix = {"loss": f"{float(loss_sum) / count:.4f}"}
    for name, value in zip(_progress["metric_names"], metric_sums):
        postfix[name] = f"{float(value) / count:.4f}"
    bar.n = int(step)
    bar.set_postfix(postfix, refresh=False)
    bar.refresh()


def init_state(model: Layer, optimizer: optax.GradientTransformation, input_shape: Sequence[int],
               *, seed: int = 0, params=None) -> TrainState:
    """A fresh ``TrainState``: parameters from ``model.init`` (or ``params``), optimizer state.

    Args:
      model: the model.
      optimizer: an Optax optimizer.
      input_shape: per-example input shape.
      seed: seeds both the initialization and the run's base key.
      params: start from these parameters instead of initializing.
    """
    if params is not None:
        params = jax.tree.map(lambda a: jnp.array(a, copy=True), params)
    return _compiled_init_state(seed, params, model=model, optimizer=optimizer,
                                input_shape=tuple(input_shape))


@partial(jax.jit, static_argnames=("model", "optimizer", "input_shape"))
def _compiled_init_state(seed, params, *, model, optimizer, input_shape):
    # One compiled program instead of a dispatch (and a small compilation) per
    # random draw and optimizer buffer.
    init_key, run_key = jax.random.split(jax.random.key(seed))
    if params is None:
        _, params = model.init(init_key, input_shape)
    return TrainState(params, optimizer.init(params), jnp.int32(0), jnp.int32(0),
                      jax.random.key_data(run_key))


def _format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{name}: {value:.4f}" for name, value in logs.items())


def fit(model: Layer, x, y, *, loss: str | Callable, optimizer: optax.GradientTransformation,
        metrics: Sequence[str | Callable] = (), epochs: int = 1, batch_size: int | None = 32,
        shuffle: bool = True, validation_data: tuple | None = None, seed: int = 0,
        verbose: int = 1, callbacks: Sequence[Any] = (), resume: bool = False,
        initial_params=None, state: TrainState | None = None, mesh=None,
        progress_every: int = 50) -> tuple[TrainState, History]:
    """Trains ``model`` on ``(x, y)``, Keras style, one compiled XLA call per epoch.

    Args:
      model: a ``Layer`` (``fnlearn.nn``), or anything with the same ``init``/``apply``.
      x, y: inputs and labels, leading axis the examples. Any numeric dtype: uint8
        images stay uint8 on the device (normalize inside the model).
      loss: a per-example loss ``loss(labels, predictions)`` or its name.
      optimizer: an Optax ``GradientTransformation`` (see ``fnlearn.optim``).
      metrics: names (``"accuracy"``) or per-example functions of ``(labels, predictions)``.
      epochs: number of passes over the data.
      batch_size: examples per step; ``None`` trains on the whole dataset each step.
      shuffle: reshuffle (on the device) every epoch.
      validation_data: ``(x_val, y_val)`` evaluated after every epoch.
      seed: determines initialization, shuffling and dropout; same seed, same bits.
      verbose: 0 silent, 1 a live progress bar per epoch, 2 one line per epoch.
      callbacks: objects with any of ``on_train_begin(state, history, resume)`` (may
        return a ``(state, history)`` to start from), ``on_epoch_end(epoch, state, logs,
        history)`` (return True to stop) and ``on_train_end(state, history)`` (may return
        the state that ``fit`` returns instead).
      resume: ask the callbacks (a checkpoint callback) to restore the latest saved run.
      initial_params: start from these parameters instead of initializing.
      state: continue from this ``TrainState`` (its ``epoch`` counts toward ``epochs``).
      mesh: a ``jax.sharding.Mesh`` whose first axis shards the batch (data parallel);
        parameters and optimizer state are replicated.
      progress_every: steps between progress-bar updates with ``verbose=1``.

    Returns:
      ``(state, history)``: the final ``TrainState`` and a ``History``.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    x, y = _as_host_array("x", x), _as_host_array("y", y)
    _check_xy(x, y)
    n = len(x)
    if batch_size is None:
        batch_size = n
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
            or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
    batch_size = int(batch_size)
    loss_fn = _resolve_loss(loss)
    metric_names, metric_fns = zip(*map(losses_lib.get_metric, metrics)) if metrics else ((), ())

    if state is not None and initial_params is not None:
        raise ValueError("pass either state (to continue a run) or initial_params, not both")
    if state is None:
        try:
            state = init_state(model, optimizer, x.shape[1:], seed=seed, params=initial_params)
        except Exception as error:  # noqa: BLE001 - re-raised with the shape that caused it
            raise ValueError(f"model cannot be initialized for inputs of per-example shape "
                             f"{x.shape[1:]} (x has shape {x.shape}): {error}") from error
    _check_model_input(model, state.params, x, loss_fn, y)
    val_x = val_y = None
    if validation_data is not None:
        if len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (x_val, y_val)")
        val_x = _as_host_array("validation x", validation_data[0])
        val_y = _as_host_array("validation y", validation_data[1])
        _check_xy(val_x, val_y, "validation x")
        _check_model_input(model, state.params, val_x, loss_fn, val_y)

    history = History()
    if resume and not any(hasattr(c, "on_train_begin") for c in callbacks):
        raise ValueError("resume=True needs a callback that restores a run, e.g. "
                         "callbacks=[fnlearn.ModelCheckpoint(directory)]")
    for callback in callbacks:
        if hasattr(callback, "on_train_begin"):
            restored = callback.on_train_begin(state, history, resume)
            if restored is not None:
                state, history = restored

    sharding = replicated = None
    if mesh is not None:
        from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

        # The step constrains the batch and leaves the rest to XLA's sharding
        # propagation, which needs Auto axes; jax.make_mesh defaults to Explicit ones.
        mesh = Mesh(mesh.devices, mesh.axis_names,
                    axis_types=(AxisType.Auto,) * mesh.devices.ndim)
        devices = mesh.shape[mesh.axis_names[0]]
        if batch_size % devices:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by the {devices} devices of mesh "
                f"axis {mesh.axis_names[0]!r}; the global batch must split evenly")
        sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
        replicated = NamedSharding(mesh, PartitionSpec())
    place = partial(jax.device_put, device=replicated) if mesh is not None else jnp.asarray
    x_dev, y_dev = place(x), place(y)
    val_dev = (place(val_x), place(val_y)) if val_x is not None else (None, None)
    state = jax.tree.map(place, state)

    per_epoch_host_work = verbose > 0 or any(hasattr(c, "on_epoch_end") for c in callbacks)
    static = dict(model=model, loss_fn=loss_fn, metric_fns=tuple(metric_fns),
                  optimizer=optimizer, batch_size=batch_size, shuffle=shuffle,
                  sharding=sharding, progress_every=progress_every if verbose == 1 else 0)
    steps = math.ceil(n / batch_size)
    start_epoch = int(state.epoch)
    remaining = epochs - start_epoch
    chunk = 1 if per_epoch_host_work else remaining
    epoch = start_epoch
    while epoch < epochs:
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
        bar = None
        if verbose == 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, unit="step", leave=True, dynamic_ncols=True)
            _progress.update(bar=bar, metric_names=metric_names)
        started = time.perf_counter()
        try:
            state, stacked = _compiled_train_epochs(
                state, x_dev, y_dev, *val_dev, num_epochs=chunk, **static)
            stacked = jax.device_get(stacked)
        finally:
            _progress.clear()
        seconds = (time.perf_counter() - started) / chunk
        for i in range(chunk):
            logs = _epoch_logs(stacked, i, metric_names)
            first_bad = int(stacked["first_bad_step"][i])
            if first_bad >= 0:
                if bar is not None:
                    bar.close()
                raise NonFiniteLossError(
                    f"loss became NaN or inf at epoch {epoch + 1}, step {first_bad + 1} of "
                    f"{steps}; training stopped: the error's .state (and any checkpoint) is "
                    "from before that step. Lower the learning rate or check the data for "
                    "extreme values.", state)
            history.append(epoch, logs, seconds)
            if bar is not None:
                bar.n = steps
                bar.set_postfix_str(_format_logs(logs), refresh=True)
                bar.close()
            if verbose == 2:
                per_step = seconds / steps
                unit = f"{per_step * 1e3:.0f}ms" if per_step >= 1e-3 else f"{per_step * 1e6:.0f}us"
                print(f"{steps}/{steps} - {seconds:.1f}s - {unit}/step - {_format_logs(logs)}",
                      flush=True)
            stop = False
            for callback in callbacks:
                if hasattr(callback, "on_epoch_end"):
                    stop = bool(callback.on_epoch_end(epoch, state, logs, history)) or stop
            epoch += 1
            if stop:
                epochs = epoch
    for callback in callbacks:
        if hasattr(callback, "on_train_end"):
            # EarlyStopping(restore_best_weights=True) hands back the best state here.
            returned = callback.on_train_end(state, history)
            if returned is not None:
                state = returned
    return state, history


def _epoch_logs(stacked: dict, i: int, metric_names: Sequence[str]) -> dict[str, float]:
    logs = {"loss": float(stacked["loss"][i])}
    logs.update({name: float(v[i]) for name, v in zip(metric_names, stacked["metrics"])})
    if "val_loss" in stacked:
        logs["val_loss"] = float(stacked["val_loss"][i])
        logs.update({f"val_{name}": float(v[i])
                     for name, v in zip(metric_names, stacked["val_metrics"])})
    return logs


@partial(jax.jit, static_argnames=("model", "loss_fn", "metric_fns", "batch_size"))
def _compiled_evaluate(params, x, y, *, model, loss_fn, metric_fns, batch_size):
    return _evaluate_arrays(model, loss_fn, metric_fns, params, x, y, batch_size)


def evaluate(model: Layer, params, x, y, *, loss: str | Callable,
             metrics: Sequence[str | Callable] = (),
             batch_size: int = EVAL_BATCH_SIZE) -> dict[str, float]:
    """Mean loss and metrics of ``model`` on ``(x, y)`` (Keras ``evaluate``), one XLA call.

    Returns:
      ``{"loss": ..., "<metric>": ...}``.
    """
    x, y = _as_host_array("x", x), _as_host_array("y", y)
    _check_xy(x, y)
    loss_fn = _resolve_loss(loss)
    _check_model_input(model, params, x, loss_fn, y)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    metric_names, metric_fns = zip(*map(losses_lib.get_metric, metrics)) if metrics else ((), ())
    value, metric_values = _compiled_evaluate(
        params, jnp.asarray(x), jnp.asarray(y), model=model, loss_fn=loss_fn,
        metric_fns=tuple(metric_fns), batch_size=min(batch_size, len(x)))
    return {"loss": float(value), **{n: float(v) for n, v in zip(metric_names, metric_values)}}


@partial(jax.jit, static_argnames=("model", "batch_size"))
def _compiled_predict(params, x, *, model, batch_size):
    n = x.shape[0]
    steps, padded = _batch_plan(n, batch_size)
    index = jnp.minimum(jnp.arange(padded), n - 1).reshape(steps, batch_size)
    out = jax.lax.map(lambda idx: model.apply(params, x[idx]), index)
    return out.reshape(padded, *out.shape[2:])[:n]


def predict(model: Layer, params, x, *, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Model outputs for every example of ``x`` (inference mode), as a NumPy array."""
    x = _as_host_array("x", x)
    if len(x) == 0:
        raise ValueError("x is empty: nothing to predict")
    _check_model_input(model, params, x, None, None)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return np.asarray(_compiled_predict(params, jnp.asarray(x), model=model,
                                        batch_size=min(batch_size, len(x))))

"""Host-side checks of what ``fit``, ``evaluate`` and ``predict`` are given, with their messages.

Everything here runs before anything is compiled, on NumPy arrays and abstract
shapes, so a mistake is named (with the argument and the shapes) before a long
compilation or a silent wrong answer. ``docs/errors.md`` lists every message.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnlearn import losses as losses_lib
from fnlearn import optim
from fnlearn.compiler import program
from fnlearn.nn.core import Layer, apply, init_with_state
from fnlearn.state import TrainState

# A softmax row this sure of one class, for most of the first batch, before any
# training, means unscaled inputs (raw pixels give logits in the hundreds).
SATURATED = 0.999
LARGE_INPUT = 10.0
_PROBABILITY_LOSSES = (losses_lib.sparse_categorical_crossentropy,
                       losses_lib.categorical_crossentropy)


def _check_dtype(name: str, dtype) -> None:
    numeric = (jax.dtypes.issubdtype(dtype, np.number) or dtype == np.bool_
               or jax.dtypes.issubdtype(dtype, np.floating))
    if dtype == np.dtype(object) or not numeric:
        raise TypeError(f"{name} must be a numeric array, got dtype {dtype}")
    if jax.dtypes.issubdtype(dtype, np.complexfloating):
        raise TypeError(f"{name} must be real numbers, got dtype {dtype}")


def as_host_array(name: str, value) -> np.ndarray:
    """``value`` as a numeric NumPy array with an example axis and no NaN/inf, or a clear error.

    Any real dtype NumPy or JAX knows is kept, bfloat16 and float16 included.
    """
    try:
        array = np.asarray(value)
    except ValueError as error:
        raise ValueError(f"{name} cannot be converted to an array (lists of unequal "
                         f"lengths?): {error}; pad sequences of different lengths into one "
                         "array with fnlearn.data.pad_sequences (and mask the padding)"
                         ) from error
    _check_dtype(name, array.dtype)
    if array.ndim == 0:
        raise ValueError(f"{name} must have a leading example axis, got a scalar")
    if jax.dtypes.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{name} contains NaN or inf (first at index {bad})")
    return array


@program
def _all_finite(x):
    return jnp.all(jnp.isfinite(x))


def as_array(name: str, value):
    """``as_host_array``, except that a ``jax.Array`` stays where it is (checked on its device)."""
    if not isinstance(value, jax.Array):
        return as_host_array(name, value)
    _check_dtype(name, value.dtype)
    if value.ndim == 0:
        raise ValueError(f"{name} must have a leading example axis, got a scalar")
    if jax.dtypes.issubdtype(value.dtype, np.floating) and not bool(_all_finite(value)):
        raise ValueError(f"{name} contains NaN or inf")
    return value


def as_data(name: str, value):
    """Inputs or labels as arrays: one array, or a dict or tuple of them (several inputs)."""
    if isinstance(value, dict):
        return {key: as_array(f"{name}[{key!r}]", v) for key, v in value.items()}
    if isinstance(value, tuple):
        return tuple(as_array(f"{name}[{i}]", v) for i, v in enumerate(value))
    return as_array(name, value)


def count_examples(name: str, data) -> int:
    """The examples in ``data`` (its leaves' common leading length), or a clear error."""
    counts = {len(leaf) for leaf in jax.tree.leaves(data)}
    if len(counts) > 1:
        raise ValueError(f"{name}'s arrays have different numbers of examples: {sorted(counts)}")
    return counts.pop() if counts else 0


def check_xy(x, y, name: str = "x") -> None:
    """Refuses an empty dataset, or inputs and labels of different lengths."""
    n = count_examples(name, x)
    if n == 0:
        raise ValueError(f"{name} is empty: nothing to train or evaluate on")
    if y is not None and count_examples("labels", y) != n:
        raise ValueError(f"{name} has {n} examples but its labels have "
                         f"{count_examples('labels', y)}")


def shape_tree(input_shape):
    """A per-example input shape as a tuple of ints, or a dict/tuple of them (several inputs)."""
    if isinstance(input_shape, dict):
        return {key: shape_tree(value) for key, value in input_shape.items()}
    if isinstance(input_shape, list | tuple) and input_shape and all(
            isinstance(s, list | tuple | dict) for s in input_shape):
        return tuple(shape_tree(s) for s in input_shape)
    try:
        return tuple(int(d) for d in input_shape)
    except TypeError as error:
        raise TypeError(f"input_shape must be a tuple of ints (per example), or a dict or "
                        f"tuple of them for several inputs; got {input_shape!r}") from error


def example_of(data):
    """``ShapeDtypeStruct``s of one example of ``data`` (a leading axis of 1)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype), data)


def per_example_shape(data):
    """The per-example shape of ``data``: a tuple, or the pytree of them."""
    return jax.tree.map(lambda a: tuple(a.shape[1:]), data)


def check_epochs(epochs, verbose) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")


def check_batch_size(batch_size, num_examples: int) -> int:
    """The batch size as an int (``None``: the whole dataset), or a clear error."""
    if batch_size is None:
        return num_examples
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
            or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if batch_size > num_examples:
        raise ValueError(f"batch_size {batch_size} is larger than the {num_examples} "
                         "training examples")
    return int(batch_size)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    return int(seed)


def resolve_optimizer(optimizer) -> optax.GradientTransformation:
    """An Optax optimizer, or one of Keras's names (``"adam"``, ``"sgd"``, ``"rmsprop"``)."""
    if isinstance(optimizer, str):
        return optim.get_optimizer(optimizer)
    if not (callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"optimizer must be an Optax GradientTransformation (e.g. "
                        f"fnlearn.optim.keras_adam()) or a name {sorted(optim.OPTIMIZERS)}, got "
                        f"{type(optimizer).__name__}")
    return optimizer


def check_params(params, argument: str = "params") -> None:
    """Refuses a ``TrainState`` where parameters are expected."""
    if isinstance(params, TrainState):
        raise TypeError(f"{argument} got a TrainState; pass state.params (and "
                        "model_state=state.model_state for a model with state)")


def _looks_one_hot(y: np.ndarray, out_shape) -> bool:
    if y.ndim < 2 or tuple(y.shape[1:]) != tuple(out_shape[1:]) or y.shape[-1] < 2:
        return False
    sample = y[:256]
    return bool(np.all((sample == 0) | (sample == 1)) and np.all(sample.sum(-1) == 1))


def _check_labels(loss_fn, y: np.ndarray, out) -> None:
    sparse = losses_lib.sparse_categorical_crossentropy, losses_lib.nll_loss
    if loss_fn not in sparse and getattr(loss_fn, "func", None) not in sparse:
        return
    if _looks_one_hot(y, out.shape):
        raise ValueError(f"labels of shape {y.shape} look one-hot: use "
                         "loss='categorical_crossentropy', or pass y.argmax(-1) as class ids")
    if out.ndim > 2 and y.ndim == 1:
        raise ValueError(f"the model's outputs have per-example shape {out.shape[1:]}, extra "
                         f"axes for labels of shape {y.shape}: add fnlearn.nn.Flatten() before "
                         "the last Dense layer")
    losses_lib.check_sparse_labels(y, (len(y), *out.shape[1:]), out.shape[-1])


def _framework_of(model) -> str | None:
    """``"linen"`` or ``"nnx"`` for a Flax module (read off its classes: Flax is not imported)."""
    modules = [cls.__module__ for cls in type(model).__mro__]
    if any(name.startswith("flax.linen") for name in modules):
        return "linen"
    if any(name.startswith("flax.nnx") for name in modules):
        return "nnx"
    return None


def check_model(model, argument: str = "model") -> None:
    """Refuses anything but a ``Layer``, naming the wrapper a Flax module needs."""
    if isinstance(model, Layer):
        return
    framework = _framework_of(model)
    if framework == "linen":
        raise TypeError(f"{argument} is a flax.linen Module ({type(model).__name__}): wrap it "
                        "with fnlearn.nn.from_flax(module, train_argument=...) to get a Layer")
    if framework == "nnx":
        raise TypeError(f"{argument} is a flax.nnx Module ({type(model).__name__}): wrap it "
                        "with fnlearn.nn.from_nnx(module) to get a Layer")
    raise TypeError(f"{argument} must be an fnlearn.nn Layer (e.g. fnlearn.nn.serial(...)), "
                    f"got {type(model).__name__}")


def missing_state_hint(model: Layer, model_state, input_shape) -> str | None:
    """The fix when a model with state (BatchNorm statistics) is given none, else None.

    Args:
      model: the model.
      model_state: the state given (None or ``{}`` when forgotten).
      input_shape: per-example input shape (or a pytree of them), to learn abstractly
        whether the model has any state at all (a Flax module may have none).
    """
    if not getattr(model, "stateful", False) or jax.tree.leaves(model_state or {}):
        return None
    try:
        expected = jax.eval_shape(lambda k: init_with_state(model, k, input_shape)[2],
                                  jax.random.key(0))
    except Exception:  # noqa: BLE001 - a model that cannot init here is another error
        return None
    if not jax.tree.leaves(expected):
        return None
    return ("the model has non-trainable state (BatchNorm statistics) but model_state is "
            "empty: pass model_state=state.model_state")


def channels_last_hint(shape, works) -> str:
    """A sentence for NCHW images given to an NHWC model, or ``""``.

    Args:
      shape: the per-example input shape that failed.
      works: ``works(shape) -> bool``, whether the model takes that per-example shape.
    """
    if not (isinstance(shape, tuple) and len(shape) == 3 and shape[0] < min(shape[1:])):
        return ""
    try:
        transposed_works = works((shape[1], shape[2], shape[0]))
    except Exception:  # noqa: BLE001 - any failure means the transposed shape does not fit
        return ""
    if not transposed_works:
        return ""
    return (f"; the model takes {(shape[1], shape[2], shape[0])}, the same images channels "
            "last: fnlearn takes NHWC (channels last); use x.transpose(0, 2, 3, 1)")


def cannot_initialize(model: Layer, shape, error: Exception) -> ValueError:
    """The error for a model that cannot be initialized for per-example inputs ``shape``."""
    def works(candidate):
        jax.eval_shape(lambda k: init_with_state(model, k, candidate), jax.random.key(0))
        return True

    return ValueError(f"model cannot be initialized for inputs of per-example shape {shape}"
                      f"{channels_last_hint(shape, works)}: {error}")


def model_output(model: Layer, params, model_state, x):
    """The model's output shapes for one example of ``x``: shape errors surface here, early."""
    check_model(model)
    check_params(params)

    def output(example):
        return jax.eval_shape(lambda p, s, xb: apply(model, p, xb, state=s)[0],
                              params, model_state, example)

    try:
        return output(example_of(x))
    except Exception as error:  # noqa: BLE001 - re-raised with the shapes that caused it
        shape = per_example_shape(x)
        hint = missing_state_hint(model, model_state, shape)
        if hint is not None:
            raise ValueError(hint) from error
        dtypes = jax.tree.map(lambda a: str(a.dtype), x)
        nchw = channels_last_hint(shape, lambda s: bool(output(
            jax.ShapeDtypeStruct((1, *s), x.dtype))))
        raise ValueError(
            f"model cannot be applied to inputs of per-example shape {shape} "
            f"(dtype {dtypes}){nchw}: {error}") from error


def _where(output) -> str:
    return "" if output is None else f" of output {output!r}"


def check_losses(losses, y, out) -> None:
    """Each ``(output, loss_fn, weight)`` of ``losses`` against its labels in ``y``, abstractly."""
    for output, loss_fn, _ in losses:
        labels = y if output is None else _label_part(y, output)
        predictions = out if output is None else out[output]
        _check_labels(loss_fn, labels, predictions)
        try:
            jax.eval_shape(loss_fn, example_of(labels), predictions)
        except Exception as error:  # noqa: BLE001
            raise ValueError(
                f"loss{_where(output)} cannot compare labels of per-example shape "
                f"{tuple(labels.shape[1:])} with model outputs of per-example shape "
                f"{tuple(predictions.shape[1:])}: {error}") from error


def _label_part(y, output):
    try:
        return y[output]
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"y has no labels for output {output!r}: pass y as a dict (or tuple) "
                         "with labels for every output that has a loss") from error


def check_model_input(model: Layer, params, model_state, x, loss_fn=None, y=None):
    """Runs the model and loss abstractly on one example: shape errors surface here, early."""
    out = model_output(model, params, model_state, x)
    if y is not None and loss_fn is not None:
        check_losses(((None, loss_fn, 1.0),), y, out)
    return out


@program(static_argnames="model")
def _outputs(params, model_state, x, *, model):
    return apply(model, params, x, state=model_state)[0]


def warn_if_not_probabilities(model: Layer, params, model_state, x: np.ndarray,
                              loss_fn) -> None:
    """Warns when a probability loss gets outputs that are not probabilities (logits, raw pixels).

    Looks once at the outputs for the first 32 examples, on the host, before training:
    outputs that are not probabilities, or probabilities that already put everything
    on one class for inputs of large magnitude (raw 0..255 pixels through a softmax);
    and, for ``nll_loss`` (which takes log-probabilities), outputs that are probabilities.
    """
    base = getattr(loss_fn, "func", loss_fn)
    from_logits = getattr(loss_fn, "keywords", {}).get("from_logits")
    checked = (*_PROBABILITY_LOSSES, losses_lib.nll_loss, losses_lib.binary_crossentropy)
    if base not in checked or from_logits:
        return
    sample = x[:32]
    out = np.asarray(_outputs(params, model_state, jnp.asarray(sample), model=model))
    if out.ndim < 2:
        return
    in_range = bool(np.all((out >= 0) & (out <= 1)))
    sums_to_one = bool(np.allclose(out.sum(-1), 1.0, atol=1e-3))
    if base is losses_lib.nll_loss:
        if in_range and sums_to_one:
            # -p[label] is minimized by p = 1 too, so this trains, silently, to a negative
            # loss with gradients that are not the cross-entropy's.
            warnings.warn(
                "nll_loss expects log-probabilities, but the model's outputs for the first batch "
                "are probabilities (in [0, 1], rows summing to 1): end the model with "
                "fnlearn.nn.LogSoftmax() (torch.nn.LogSoftmax) instead of a softmax, or use "
                "loss='sparse_categorical_crossentropy'", UserWarning, stacklevel=3)
        return
    if base is losses_lib.binary_crossentropy:
        if not in_range:
            # Clipped to [1e-7, 1 - 1e-7], outputs outside [0, 1] get no gradient at all.
            warnings.warn(
                f"binary_crossentropy expects probabilities, but the model's outputs for the "
                f"first batch range over [{out.min():.3g}, {out.max():.3g}]: end the model with "
                "a sigmoid (Dense(1, activation='sigmoid')) or pass functools.partial("
                "fnlearn.losses.binary_crossentropy, from_logits=True)", UserWarning,
                stacklevel=3)
        return
    if not (in_range and sums_to_one):
        warnings.warn(
            f"the loss expects probabilities, but the model's outputs for the first batch range "
            f"over [{out.min():.3g}, {out.max():.3g}] with rows summing to "
            f"{out.sum(-1).min():.3g}..{out.sum(-1).max():.3g}: end the model with a softmax "
            "(Dense(..., activation='softmax')) or pass a loss with from_logits=True, e.g. "
            "functools.partial(fnlearn.losses.sparse_categorical_crossentropy, from_logits=True)",
            UserWarning, stacklevel=3)
        return
    saturated = int(np.sum(out.reshape(-1, out.shape[-1]).max(-1) >= SATURATED))
    rows = out.size // out.shape[-1]
    low, high = float(sample.min()), float(sample.max())
    if saturated * 2 > rows and max(abs(low), abs(high)) > LARGE_INPUT:
        warnings.warn(
            f"{saturated} of the first {rows} examples already get probability >= {SATURATED} "
            f"for one class before training, and the inputs range over [{low:.4g}, {high:.4g}]: "
            "scale them first, e.g. fnlearn.nn.Normalize(0, 255) as the model's first layer "
            "for 8-bit pixels (a saturated softmax barely learns)", UserWarning, stacklevel=3)

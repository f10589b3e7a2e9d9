"""Host-side checks of what ``fit``, ``evaluate`` and ``predict`` are given, with their messages.

Everything here runs before anything is compiled, on NumPy arrays and abstract
shapes, so a mistake is named (with the argument and the shapes) before a long
compilation or a silent wrong answer. ``docs/errors.md`` lists every message.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnlearn import losses as losses_lib
from fnlearn import optim
from fnlearn.nn.core import Layer, apply
from fnlearn.state import TrainState

# A softmax row this sure of one class, for most of the first batch, before any
# training, means unscaled inputs (raw pixels give logits in the hundreds).
SATURATED = 0.999
LARGE_INPUT = 10.0
_PROBABILITY_LOSSES = (losses_lib.sparse_categorical_crossentropy,
                       losses_lib.categorical_crossentropy)


def as_host_array(name: str, value) -> np.ndarray:
    """``value`` as a numeric NumPy array with an example axis and no NaN/inf, or a clear error."""
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


def check_xy(x: np.ndarray, y: np.ndarray, name: str = "x") -> None:
    """Refuses an empty dataset, or inputs and labels of different lengths."""
    if len(x) == 0:
        raise ValueError(f"{name} is empty: nothing to train or evaluate on")
    if len(x) != len(y):
        raise ValueError(f"{name} has {len(x)} examples but its labels have {len(y)}")


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


def check_model_input(model: Layer, params, model_state, x: np.ndarray, loss_fn=None,
                      y: np.ndarray | None = None):
    """Runs the model and loss abstractly on one example: shape errors surface here, early."""
    check_params(params)
    example = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    try:
        out = jax.eval_shape(lambda p, s, xb: apply(model, p, xb, state=s)[0],
                             params, model_state, example)
    except Exception as error:  # noqa: BLE001 - re-raised with the shapes that caused it
        raise ValueError(
            f"model cannot be applied to inputs of per-example shape {x.shape[1:]} "
            f"(dtype {x.dtype}): {error}") from error
    if y is not None and loss_fn is not None:
        _check_labels(loss_fn, y, out)
        label = jax.ShapeDtypeStruct((1, *y.shape[1:]), y.dtype)
        try:
            jax.eval_shape(loss_fn, label, out)
        except Exception as error:  # noqa: BLE001
            raise ValueError(
                f"loss cannot compare labels of per-example shape {y.shape[1:]} with model "
                f"outputs of per-example shape {out.shape[1:]}: {error}") from error
    return out


@partial(jax.jit, static_argnames="model")
def _outputs(params, model_state, x, *, model):
    return apply(model, params, x, state=model_state)[0]


def warn_if_not_probabilities(model: Layer, params, model_state, x: np.ndarray,
                              loss_fn) -> None:
    """Warns when a probability loss gets outputs that are not probabilities (logits, raw pixels).

    Looks once at the outputs for the first 32 examples, on the host, before training:
    outputs that are not probabilities, or probabilities that already put everything
    on one class for inputs of large magnitude (raw 0..255 pixels through a softmax).
    """
    base = getattr(loss_fn, "func", loss_fn)
    if base not in _PROBABILITY_LOSSES or getattr(loss_fn, "keywords", {}).get("from_logits"):
        return
    sample = x[:32]
    out = np.asarray(_outputs(params, model_state, jnp.asarray(sample), model=model))
    if out.ndim < 2:
        return
    in_range = bool(np.all((out >= 0) & (out <= 1)))
    sums_to_one = bool(np.allclose(out.sum(-1), 1.0, atol=1e-3))
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

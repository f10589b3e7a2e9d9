"""Losses and metrics as pure functions of ``(labels, predictions)``.

Each returns one value per example (Keras's convention), so a caller chooses
the reduction: ``fit`` takes a masked mean, which makes a short last batch
count each of its examples once. A metric is a ``Metric``: sums that add up over
batches and a result, so per-example means (``MeanMetric``) and streaming metrics
(precision, AUC) share one road through ``fit`` and ``evaluate``.

JAX indexes out of range without complaint, so labels are checked on the host
whenever they are concrete (``check_sparse_labels``); ``fit`` checks the whole
dataset once before compiling anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

# Keras's backend.epsilon(): how far probabilities are clipped from 0 and 1.
KERAS_EPSILON = 1e-7


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_sparse_labels(labels, predictions_shape: tuple[int, ...], num_classes: int) -> None:
    """Raises ``ValueError`` unless ``labels`` are integers in ``[0, num_classes)`` matching shape.

    Args:
      labels: integer class ids, shape ``predictions_shape[:-1]`` (or with a trailing 1).
      predictions_shape: shape of the model output, classes on the last axis.
      num_classes: number of classes.
    """
    dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"sparse_categorical_crossentropy needs integer class labels, got dtype {dtype}; "
            "cast with labels.astype(int) if they are whole numbers, or for one-hot targets "
            "use loss='categorical_crossentropy' (fnlearn.losses.categorical_crossentropy)")
    shape = tuple(labels.shape)
    if shape != tuple(predictions_shape[:-1]) and shape != (*predictions_shape[:-1], 1):
        raise ValueError(
            f"labels shape {shape} does not match predictions shape {tuple(predictions_shape)}: "
            f"expected {tuple(predictions_shape[:-1])}")
    if _is_concrete(labels) and np.size(labels):
        # Device labels are reduced where they are; only the error path reads them back.
        backend = jnp if isinstance(labels, jax.Array) else np
        low, high = int(backend.min(labels)), int(backend.max(labels))
        if low < 0 or high >= num_classes:
            values = np.asarray(labels)
            bad = int(np.flatnonzero((values < 0) | (values >= num_classes))[0])
            raise ValueError(
                f"labels must be in [0, {num_classes}) for {num_classes} classes; "
                f"found {values.reshape(-1)[bad]} at index {bad} (range of labels: {low}..{high})")


def sparse_categorical_crossentropy(labels, predictions, *, from_logits: bool = False):
    """Cross-entropy between integer labels and a distribution over the last axis.

    Args:
      labels: integer class ids, shape ``predictions.shape[:-1]``.
      predictions: logits (``from_logits=True``) or probabilities.
      from_logits: with logits the loss is ``-log_softmax(logits)[label]``, stable for
        any magnitude. With probabilities it follows Keras: clip to
        ``[1e-7, 1 - 1e-7]``, take the log, renormalize (``log_softmax``).

    Returns:
      One loss per example, shape ``predictions.shape[:-1]``.
    """
    check_sparse_labels(labels, predictions.shape, predictions.shape[-1])
    labels = labels.reshape(predictions.shape[:-1])
    if from_logits:
        log_probs = jax.nn.log_softmax(predictions, axis=-1)
    else:
        clipped = jnp.clip(predictions, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
        log_probs = jax.nn.log_softmax(jnp.log(clipped), axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)
    return -picked[..., 0]


def categorical_crossentropy(labels, predictions, *, from_logits: bool = False):
    """Cross-entropy between one-hot (or soft) labels and a distribution over the last axis.

    Keras's ``categorical_crossentropy``: labels have the predictions' shape.

    Args:
      labels: target distributions, shape ``predictions.shape``.
      predictions: logits (``from_logits=True``) or probabilities (clipped to
        ``[1e-7, 1 - 1e-7]`` and renormalized, as Keras does).

    Returns:
      One loss per example, shape ``predictions.shape[:-1]``.
    """
    if tuple(labels.shape) != tuple(predictions.shape):
        raise ValueError(
            f"categorical_crossentropy: labels shape {tuple(labels.shape)} != predictions shape "
            f"{tuple(predictions.shape)}; it needs one-hot labels (for integer class ids use "
            "sparse_categorical_crossentropy)")
    if from_logits:
        log_probs = jax.nn.log_softmax(predictions, axis=-1)
    else:
        clipped = jnp.clip(predictions, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
        log_probs = jnp.log(clipped / jnp.sum(clipped, axis=-1, keepdims=True))
    return -jnp.sum(labels.astype(log_probs.dtype) * log_probs, axis=-1)


def nll_loss(labels, log_probabilities):
    """PyTorch's ``F.nll_loss`` per example: ``-log_probabilities[label]``.

    Args:
      labels: integer class ids, shape ``log_probabilities.shape[:-1]``.
      log_probabilities: log-probabilities (a ``log_softmax`` output) on the last axis.
    """
    check_sparse_labels(labels, log_probabilities.shape, log_probabilities.shape[-1])
    labels = labels.reshape(log_probabilities.shape[:-1])
    picked = jnp.take_along_axis(log_probabilities, labels[..., None].astype(jnp.int32), axis=-1)
    return -picked[..., 0]


def mean_squared_error(targets, predictions):
    """Squared error averaged over the last axis: one value per example (Keras ``mse``).

    Averaged over examples, this is PyTorch's ``nn.MSELoss()``.
    """
    if tuple(targets.shape) != tuple(predictions.shape):
        raise ValueError(
            f"mean_squared_error: targets shape {tuple(targets.shape)} != predictions shape "
            f"{tuple(predictions.shape)}; broadcasting here would silently compute a wrong loss")
    return jnp.mean(jnp.square(predictions - targets), axis=-1)


def accuracy(labels, predictions):
    """1.0 where ``argmax(predictions)`` equals the label, else 0.0, per example.

    Labels are integer class ids, or one-hot rows (the predictions' shape), as with
    Keras's ``categorical_accuracy``.
    """
    if tuple(labels.shape) == tuple(predictions.shape) and predictions.shape[-1] > 1:
        labels = jnp.argmax(labels, axis=-1)
    labels = labels.reshape(predictions.shape[:-1])
    return (jnp.argmax(predictions, axis=-1) == labels).astype(jnp.float32)


LOSSES: dict[str, Callable] = {
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "categorical_crossentropy": categorical_crossentropy,
    "nll_loss": nll_loss,
    "mse": mean_squared_error,
    "mean_squared_error": mean_squared_error,
}

METRICS: dict[str, Callable] = {
    "accuracy": accuracy,
    "acc": accuracy,
    "categorical_accuracy": accuracy,
    "sparse_categorical_accuracy": accuracy,
    "mse": mean_squared_error,
    "mean_squared_error": mean_squared_error,
}


def get_loss(loss: str | Callable) -> Callable:
    """Resolves a loss given by name (Keras style) or as a per-example function."""
    if callable(loss):
        return loss
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {sorted(LOSSES)} or pass a function "
                         "loss(labels, predictions) returning one value per example")
    return LOSSES[loss]


@dataclass(frozen=True)
class MeanMetric:
    """A per-example function averaged over the real rows of every batch of an epoch.

    The shape every metric has (``Metric``): ``update(labels, predictions, weights)``
    returns sums that add up over batches (padding rows weigh 0) and ``result(sums)``
    turns the epoch's total into the value logged. Equal for the same function and
    name, so naming a metric twice reuses the compiled programs.
    """

    fn: Callable
    name: str

    def update(self, labels, predictions, weights):
        return jnp.sum(self.fn(labels, predictions) * weights), jnp.sum(weights)

    def result(self, sums):
        return mean_of(sums)


def mean_of(sums):
    """``total / count`` of a ``(total, count)`` pair of sums (0 when nothing was counted)."""
    total, count = sums
    return total / jnp.maximum(count, 1.0)


class Metric(Protocol):
    """What ``fit`` and ``evaluate`` need of a metric: a name, additive sums, a result.

    ``update(labels, predictions, weights)`` gets one batch (``weights`` are 1.0 for
    real rows, 0.0 for padding) and returns a pytree of float32 arrays whose
    elementwise sum over batches is all ``result`` needs: a mean's total and count,
    a confusion count per threshold for ``auc``. Streaming metrics are exact over the
    epoch, not means of per-batch values.
    """

    name: str

    def update(self, labels, predictions, weights) -> Any: ...

    def result(self, sums) -> jax.Array: ...


def get_metric(metric: str | Callable | Metric) -> Metric:
    """Resolves a metric given by name (Keras style), as a per-example function, or a ``Metric``."""
    if callable(getattr(metric, "update", None)) and callable(getattr(metric, "result", None)):
        return metric
    if callable(metric):
        return MeanMetric(metric, getattr(metric, "__name__", "metric"))
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)} or pass a function")
    return MeanMetric(METRICS[metric], metric)

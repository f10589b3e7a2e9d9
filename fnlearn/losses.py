"""Losses as pure functions of ``(labels, predictions)``, with Keras's names.

Each returns one value per example (Keras's convention), so a caller chooses
the reduction: ``fit`` takes a masked mean, which makes a short last batch
count each of its examples once. Averaged over examples, each is the PyTorch loss
``docs/rosetta.md`` pairs it with. Metrics (``fnlearn.metrics``) are resolved here
too, by ``get_metric``, since the regression losses double as metrics.

JAX indexes out of range without complaint, so labels are checked on the host
whenever they are concrete (``check_sparse_labels``); ``fit`` checks the whole
dataset once before compiling anything.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fnlearn.metrics import CLASS_NAMES as METRIC_CLASS_NAMES
from fnlearn.metrics import METRICS as CLASSIFICATION_METRICS
from fnlearn.metrics import MeanMetric, Metric, accuracy, binary_targets, mean_of

__all__ = [
    "KERAS_EPSILON", "LOSSES", "METRICS", "MeanMetric", "Metric", "accuracy",
    "binary_crossentropy", "categorical_crossentropy", "check_sparse_labels",
    "cosine_similarity", "get_loss", "get_metric", "hinge", "huber", "kl_divergence",
    "mean_absolute_error", "mean_of", "mean_squared_error", "nll_loss",
    "sparse_categorical_crossentropy",
]

#: Keras's backend.epsilon(): how far probabilities are clipped from 0 and 1.
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


def _check_smoothing(label_smoothing) -> float:
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return float(label_smoothing)


def _log_probabilities(predictions, from_logits: bool, renormalize):
    if from_logits:
        return jax.nn.log_softmax(predictions, axis=-1)
    clipped = jnp.clip(predictions, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return renormalize(clipped)


def sparse_categorical_crossentropy(labels, predictions, *, from_logits: bool = False,
                                    label_smoothing: float = 0.0):
    """Cross-entropy between integer labels and a distribution over the last axis.

    Args:
      labels: integer class ids, shape ``predictions.shape[:-1]``.
      predictions: logits (``from_logits=True``) or probabilities.
      from_logits: with logits the loss is ``-log_softmax(logits)[label]``, stable for
        any magnitude (PyTorch's ``nn.CrossEntropyLoss``). With probabilities it follows
        Keras: clip to ``[1e-7, 1 - 1e-7]``, take the log, renormalize (``log_softmax``).
      label_smoothing: the target puts ``1 - label_smoothing`` on the label and spreads
        ``label_smoothing`` evenly over all classes (``nn.CrossEntropyLoss(label_smoothing=)``;
        Keras's ``CategoricalCrossentropy(label_smoothing=)`` on one-hot labels).

    Returns:
      One loss per example, shape ``predictions.shape[:-1]``.
    """
    smoothing = _check_smoothing(label_smoothing)
    check_sparse_labels(labels, predictions.shape, predictions.shape[-1])
    labels = labels.reshape(predictions.shape[:-1])
    log_probs = _log_probabilities(predictions, from_logits,
                                   lambda p: jax.nn.log_softmax(jnp.log(p), axis=-1))
    picked = -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if not smoothing:
        return picked
    return (1.0 - smoothing) * picked - smoothing * jnp.mean(log_probs, axis=-1)


def categorical_crossentropy(labels, predictions, *, from_logits: bool = False,
                             label_smoothing: float = 0.0):
    """Cross-entropy between one-hot (or soft) labels and a distribution over the last axis.

    Keras's ``categorical_crossentropy``: labels have the predictions' shape.

    Args:
      labels: target distributions, shape ``predictions.shape``.
      predictions: logits (``from_logits=True``) or probabilities (clipped to
        ``[1e-7, 1 - 1e-7]`` and renormalized, as Keras does).
      label_smoothing: labels become ``labels * (1 - s) + s / num_classes`` (Keras's).

    Returns:
      One loss per example, shape ``predictions.shape[:-1]``.
    """
    smoothing = _check_smoothing(label_smoothing)
    if tuple(labels.shape) != tuple(predictions.shape):
        raise ValueError(
            f"categorical_crossentropy: labels shape {tuple(labels.shape)} != predictions shape "
            f"{tuple(predictions.shape)}; it needs one-hot labels (for integer class ids use "
            "sparse_categorical_crossentropy)")
    log_probs = _log_probabilities(predictions, from_logits,
                                   lambda p: jnp.log(p / jnp.sum(p, axis=-1, keepdims=True)))
    labels = labels.astype(log_probs.dtype)
    if smoothing:
        labels = labels * (1.0 - smoothing) + smoothing / predictions.shape[-1]
    return -jnp.sum(labels * log_probs, axis=-1)


def binary_crossentropy(labels, predictions, *, from_logits: bool = False,
                        label_smoothing: float = 0.0):
    """Binary cross-entropy per output, averaged over the last axis (Keras's).

    With ``from_logits=True`` it is PyTorch's ``nn.BCEWithLogitsLoss`` (stable for any
    logit); with probabilities, ``nn.BCELoss`` except that probabilities are clipped to
    ``[1e-7, 1 - 1e-7]`` as Keras does (PyTorch clamps the log at -100 instead).

    Args:
      labels: 0/1 (or soft) targets, the predictions' shape; ``(N,)`` labels for an
        ``(N, 1)`` output are accepted.
      predictions: one probability (or logit) per output.
      from_logits: the predictions are logits.
      label_smoothing: labels become ``labels * (1 - s) + s / 2`` (Keras's).

    Returns:
      One loss per example, shape ``predictions.shape[:-1]``.
    """
    smoothing = _check_smoothing(label_smoothing)
    labels = binary_targets(labels, predictions, "binary_crossentropy").astype(jnp.float32)
    if smoothing:
        labels = labels * (1.0 - smoothing) + 0.5 * smoothing
    if from_logits:
        # log(1 + e^-|x|) + max(x, 0) - x * y: TensorFlow's sigmoid_cross_entropy_with_logits.
        values = (jnp.maximum(predictions, 0) - predictions * labels
                  + jnp.log1p(jnp.exp(-jnp.abs(predictions))))
    else:
        p = jnp.clip(predictions, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
        values = -(labels * jnp.log(p) + (1.0 - labels) * jnp.log(1.0 - p))
    return jnp.mean(values, axis=-1)


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




def _same_shape(name: str, targets, predictions) -> None:
    if tuple(targets.shape) != tuple(predictions.shape):
        raise ValueError(
            f"{name}: targets shape {tuple(targets.shape)} != predictions shape "
            f"{tuple(predictions.shape)}; broadcasting here would silently compute a wrong loss")


def mean_absolute_error(targets, predictions):
    """Absolute error averaged over the last axis, per example (Keras ``mae``, ``nn.L1Loss``)."""
    _same_shape("mean_absolute_error", targets, predictions)
    return jnp.mean(jnp.abs(predictions - targets), axis=-1)


def huber(targets, predictions, *, delta: float = 1.0):
    """Huber loss averaged over the last axis (Keras's ``huber``, ``nn.HuberLoss(delta=)``).

    Quadratic, ``0.5 * e**2``, for errors up to ``delta``; linear,
    ``delta * (|e| - 0.5 * delta)``, beyond.
    """
    _same_shape("huber", targets, predictions)
    error = jnp.abs(predictions - targets)
    return jnp.mean(jnp.where(error <= delta, 0.5 * jnp.square(error),
                              delta * error - 0.5 * delta ** 2), axis=-1)


def kl_divergence(targets, predictions):
    """``sum(t * log(t / p))`` over the last axis (Keras's ``kl_divergence``).

    Both are clipped to ``[1e-7, 1]`` as Keras does. PyTorch's
    ``nn.KLDivLoss(reduction="batchmean")`` takes ``log(predictions)`` and gives the
    mean of this over examples.
    """
    _same_shape("kl_divergence", targets, predictions)
    t = jnp.clip(targets, KERAS_EPSILON, 1.0)
    p = jnp.clip(predictions, KERAS_EPSILON, 1.0)
    return jnp.sum(t * jnp.log(t / p), axis=-1)


def _l2_normalize(x):
    # Keras's normalize: x * min(rsqrt(sum x^2), 1 / epsilon).
    inverse = jnp.minimum(jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)),
                          1.0 / KERAS_EPSILON)
    return x * inverse


def cosine_similarity(targets, predictions):
    """Minus the cosine similarity over the last axis (Keras's ``cosine_similarity`` loss).

    -1 for vectors pointing the same way, so minimizing it aligns them; PyTorch's
    ``F.cosine_similarity`` is the same number with the opposite sign.
    """
    _same_shape("cosine_similarity", targets, predictions)
    return -jnp.sum(_l2_normalize(targets) * _l2_normalize(predictions), axis=-1)


def hinge(labels, predictions):
    """``mean(max(1 - y * p, 0))`` over the last axis, labels -1/1 (Keras's ``hinge``).

    Labels of 0 and 1 are turned into -1 and 1 when the whole batch is 0s and 1s, as
    Keras does. PyTorch has no such loss; it is ``torch.clamp(1 - y * p, min=0).mean()``.
    """
    labels = binary_targets(labels, predictions, "hinge").astype(predictions.dtype)
    binary = jnp.all((labels == 0) | (labels == 1))
    labels = jnp.where(binary, 2.0 * labels - 1.0, labels)
    return jnp.mean(jnp.maximum(1.0 - labels * predictions, 0.0), axis=-1)


#: The losses by name (Keras's names, ``nll_loss``), as ``fit(loss=...)`` takes them.
LOSSES: dict[str, Callable] = {
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "categorical_crossentropy": categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "nll_loss": nll_loss,
    "mse": mean_squared_error,
    "mean_squared_error": mean_squared_error,
    "mae": mean_absolute_error,
    "mean_absolute_error": mean_absolute_error,
    "huber": huber,
    "kld": kl_divergence,
    "kl_divergence": kl_divergence,
    "cosine_similarity": cosine_similarity,
    "hinge": hinge,
}

# Keras's loss class names, accepted as strings as keras.losses.get accepts them.
LOSS_CLASS_NAMES = {
    "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
    "CategoricalCrossentropy": "categorical_crossentropy",
    "BinaryCrossentropy": "binary_crossentropy",
    "MeanSquaredError": "mean_squared_error",
    "MeanAbsoluteError": "mean_absolute_error",
    "Huber": "huber",
    "KLDivergence": "kl_divergence",
    "CosineSimilarity": "cosine_similarity",
    "Hinge": "hinge",
}

#: The metrics by name, as ``fit(metrics=[...])`` takes them.
METRICS: dict[str, Callable | Metric] = {
    **CLASSIFICATION_METRICS,
    "mse": mean_squared_error,
    "mean_squared_error": mean_squared_error,
    "mae": mean_absolute_error,
    "mean_absolute_error": mean_absolute_error,
}


def get_loss(loss: str | Callable) -> Callable:
    """Resolves a loss given by name (Keras's function or class name) or as a function."""
    if callable(loss):
        return loss
    name = LOSS_CLASS_NAMES.get(loss, loss) if isinstance(loss, str) else loss
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {sorted(LOSSES)}, Keras's class names "
                         f"{sorted(LOSS_CLASS_NAMES)}, or pass a function loss(labels, "
                         "predictions) returning one value per example")
    return LOSSES[name]


def get_metric(metric: str | Callable | Metric) -> Metric:
    """Resolves a metric given by name (Keras style), as a per-example function, or a ``Metric``.

    A class name (``"AUC"``, ``"Precision"``) logs under Keras's name for it (``auc``).
    """
    if callable(getattr(metric, "update", None)) and callable(getattr(metric, "result", None)):
        return metric
    if callable(metric):
        return MeanMetric(metric, getattr(metric, "__name__", "metric"))
    name = METRIC_CLASS_NAMES.get(metric, metric) if isinstance(metric, str) else metric
    if not isinstance(name, str) or name not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}, Keras's class "
                         f"names {sorted(METRIC_CLASS_NAMES)}, or pass a function or a Metric")
    found = METRICS[name]
    return found if hasattr(found, "update") else MeanMetric(found, name)

"""Metrics: what ``fit`` and ``evaluate`` log besides the loss, streamed over batches.

A metric is a ``Metric``: ``update(labels, predictions, weights)`` returns sums that
add up over the batches of an epoch (``weights`` are 1.0 for real rows, 0.0 for the
padding of a short last batch) and ``result(sums)`` turns the epoch's total into the
logged value. A per-example function becomes one with ``MeanMetric``; precision,
recall and AUC keep confusion counts instead, so their value over an epoch is exact,
not a mean of per-batch values. Each follows the Keras metric of the same name, bit
for bit where the arithmetic allows (``tests/parity/test_metrics.py``).

``fnlearn.losses.get_metric`` resolves a metric's name (Keras's names and class names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np


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


def mean_of(sums):
    """``total / count`` of a ``(total, count)`` pair of sums (0 when nothing was counted)."""
    total, count = sums
    return total / jnp.maximum(count, 1.0)


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


def binary_targets(labels, predictions, where: str):
    """``labels`` shaped as ``predictions`` for a binary (or multi-label) output.

    Labels of shape ``predictions.shape[:-1]`` for an output of width 1 (one probability
    per example, labels ``(N,)``) gain the trailing axis, as Keras's
    ``squeeze_or_expand_to_same_rank`` does; any other mismatch is refused, since
    broadcasting would silently compare every label with every prediction.
    """
    shape, target = tuple(labels.shape), tuple(predictions.shape)
    if shape == target:
        return labels
    if target[-1:] == (1,) and shape == target[:-1]:
        return labels.reshape(target)
    raise ValueError(f"{where}: labels shape {shape} != predictions shape {target}; a binary "
                     "output needs one label per prediction (0 or 1)")


def accuracy(labels, predictions):
    """1.0 where the predicted class is the label, else 0.0, per example (Keras ``accuracy``).

    Labels are integer class ids, or one-hot rows (the predictions' shape), as with
    Keras's ``categorical_accuracy``. An output of width 1 is one probability per
    example: it is thresholded at 0.5 (``binary_accuracy``), as Keras does for
    ``metrics=["accuracy"]`` on a binary output.
    """
    if predictions.shape[-1] == 1:
        return binary_accuracy(labels, predictions)
    if tuple(labels.shape) == tuple(predictions.shape):
        labels = jnp.argmax(labels, axis=-1)
    labels = labels.reshape(predictions.shape[:-1])
    return (jnp.argmax(predictions, axis=-1) == labels).astype(jnp.float32)


def binary_accuracy(labels, predictions, *, threshold: float = 0.5):
    """Keras's ``binary_accuracy``: the share of outputs with ``(p > threshold) == label``.

    Args:
      labels: 0/1 labels, the predictions' shape (or without its trailing axis of 1).
      predictions: probabilities (pass ``threshold=0.0`` for logits).
      threshold: predictions above it count as 1.

    Returns:
      One value per example: the mean over the last axis.
    """
    labels = binary_targets(labels, predictions, "binary_accuracy")
    predicted = (predictions > threshold).astype(jnp.float32)
    return jnp.mean((labels.astype(jnp.float32) == predicted).astype(jnp.float32), axis=-1)


def sparse_top_k_categorical_accuracy(labels, predictions, *, k: int = 5):
    """1.0 where the label is among the ``k`` highest predictions, per example (Keras's).

    Ties at the boundary count as in, as TensorFlow's ``in_top_k`` has it: the label
    is in when fewer than ``k`` classes score strictly higher.
    """
    labels = labels.reshape(predictions.shape[:-1]).astype(jnp.int32)
    score = jnp.take_along_axis(predictions, labels[..., None], axis=-1)
    higher = jnp.sum(predictions > score, axis=-1)
    return (higher < k).astype(jnp.float32)


def top_k_categorical_accuracy(labels, predictions, *, k: int = 5):
    """``sparse_top_k_categorical_accuracy`` for one-hot labels (Keras's)."""
    if tuple(labels.shape) != tuple(predictions.shape):
        raise ValueError(f"top_k_categorical_accuracy: labels shape {tuple(labels.shape)} != "
                         f"predictions shape {tuple(predictions.shape)}; it needs one-hot "
                         "labels (for class ids use sparse_top_k_categorical_accuracy)")
    return sparse_top_k_categorical_accuracy(jnp.argmax(labels, axis=-1), predictions, k=k)


def _confusion_inputs(labels, predictions, weights, where: str):
    """Flat positives, predictions and per-element weights, as Keras's confusion metrics."""
    labels = binary_targets(labels, predictions, where)
    per_element = jnp.broadcast_to(
        weights.reshape(weights.shape + (1,) * (predictions.ndim - weights.ndim)),
        predictions.shape).astype(jnp.float32)
    positive = (labels != 0).astype(jnp.float32)  # Keras casts labels to bool
    return positive.reshape(-1), predictions.reshape(-1), per_element.reshape(-1)


def _divide(a, b):
    """``a / b``, 0 where ``b`` is 0 (Keras's ``divide_no_nan``)."""
    return jnp.where(b == 0, 0.0, a / jnp.where(b == 0, 1.0, b))


@dataclass(frozen=True)
class Precision:
    """Keras's ``Precision``: true positives over predicted positives, over the whole epoch.

    Every output element is one binary decision (``p > threshold``), so a multi-label
    output counts each label; sums are ``(true positives, false positives)``.
    """

    threshold: float = 0.5
    name: str = "precision"

    def update(self, labels, predictions, weights):
        positive, p, w = _confusion_inputs(labels, predictions, weights, self.name)
        predicted = (p > self.threshold).astype(jnp.float32) * w
        return jnp.sum(predicted * positive), jnp.sum(predicted * (1.0 - positive))

    def result(self, sums):
        true_positives, false_positives = sums
        return _divide(true_positives, true_positives + false_positives)


@dataclass(frozen=True)
class Recall:
    """Keras's ``Recall``: true positives over actual positives, over the whole epoch."""

    threshold: float = 0.5
    name: str = "recall"

    def update(self, labels, predictions, weights):
        positive, p, w = _confusion_inputs(labels, predictions, weights, self.name)
        predicted = (p > self.threshold).astype(jnp.float32)
        return jnp.sum(predicted * positive * w), jnp.sum((1.0 - predicted) * positive * w)

    def result(self, sums):
        true_positives, false_negatives = sums
        return _divide(true_positives, true_positives + false_negatives)


@dataclass(frozen=True)
class AUC:
    """Keras's ``AUC``: the area under the ROC (or precision-recall) curve, streamed.

    Confusion counts at ``num_thresholds`` evenly spaced thresholds (the ends at
    ``-1e-7`` and ``1 + 1e-7``) add up over batches; the area is a trapezoid sum over
    them (ROC), or Keras's interpolation of precision (PR, Davis & Goadrich). With 200
    thresholds the ROC area is within about 1/200 of the exact one; when no two
    predictions share a bucket between thresholds it is exact.

    Attributes:
      num_thresholds: how many thresholds (Keras's default 200).
      curve: ``"ROC"`` or ``"PR"``.
      from_logits: predictions are logits (a sigmoid is applied first).
      name: the logged name.
    """

    num_thresholds: int = 200
    curve: str = "ROC"
    from_logits: bool = False
    name: str = "auc"

    def __post_init__(self):
        if isinstance(self.num_thresholds, bool) or not isinstance(self.num_thresholds, int) \
                or self.num_thresholds < 2:
            raise ValueError(f"num_thresholds must be an int > 1, got {self.num_thresholds!r}")
        if self.curve not in ("ROC", "PR"):
            raise ValueError(f"curve must be 'ROC' or 'PR', got {self.curve!r}")

    def update(self, labels, predictions, weights):
        positive, p, w = _confusion_inputs(labels, predictions, weights, self.name)
        p = jax.nn.sigmoid(p) if self.from_logits else p
        p = jnp.clip(p.astype(jnp.float32), 0.0, 1.0)
        # Keras's bucketing: p > i / (n - 1) exactly when ceil(p * (n - 1)) - 1 >= i, so one
        # segment sum and a reversed cumulative sum count every threshold in O(N + n).
        n = self.num_thresholds
        bucket = jnp.maximum(jnp.ceil(p * (n - 1)) - 1, 0).astype(jnp.int32)

        def above(values):
            per_bucket = jax.ops.segment_sum(values, bucket, num_segments=n)
            return jnp.flip(jnp.cumsum(jnp.flip(per_bucket)))

        true_positives, false_positives = above(positive * w), above((1.0 - positive) * w)
        return {"tp": true_positives, "fp": false_positives,
                "positives": jnp.sum(positive * w), "negatives": jnp.sum((1.0 - positive) * w)}

    def result(self, sums):
        tp, fp = sums["tp"], sums["fp"]
        fn, tn = sums["positives"] - tp, sums["negatives"] - fp
        if self.curve == "PR":
            return _interpolated_pr_auc(tp, fp, fn)
        recall, fp_rate = _divide(tp, tp + fn), _divide(fp, fp + tn)
        return jnp.sum((fp_rate[:-1] - fp_rate[1:]) * (recall[:-1] + recall[1:]) / 2)


def _interpolated_pr_auc(tp, fp, fn):
    """Keras's ``AUC.interpolate_pr_auc``: precision varies linearly in TP and P per bucket."""
    dtp = tp[:-1] - tp[1:]
    p = tp + fp
    slope = _divide(dtp, jnp.maximum(p[:-1] - p[1:], 0))
    intercept = tp[1:] - slope * p[1:]
    ratio = jnp.where((p[:-1] > 0) & (p[1:] > 0), _divide(p[:-1], jnp.maximum(p[1:], 0)), 1.0)
    return jnp.sum(_divide(slope * (dtp + intercept * jnp.log(ratio)),
                           jnp.maximum(tp[1:] + fn[1:], 0)))


def exact_roc_auc(labels, scores) -> float:
    """The exact area under the ROC curve (ties count one half), on the host, in float64.

    The Mann-Whitney statistic: the probability that a random positive scores above a
    random negative. For checking ``AUC``, not for training loops.
    """
    labels, scores = np.asarray(labels).reshape(-1) != 0, np.asarray(scores, np.float64)
    scores = scores.reshape(-1)
    positives, negatives = scores[labels], scores[~labels]
    if not len(positives) or not len(negatives):
        raise ValueError("exact_roc_auc needs at least one positive and one negative label")
    order = np.sort(negatives)
    below = np.searchsorted(order, positives, side="left")
    ties = np.searchsorted(order, positives, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(positives) * len(negatives)))


# Metric names, Keras's spelling; values are per-example functions or Metric values.
METRICS: dict[str, Callable | Metric] = {
    "accuracy": accuracy,
    "acc": accuracy,
    "categorical_accuracy": accuracy,
    "sparse_categorical_accuracy": accuracy,
    "binary_accuracy": binary_accuracy,
    "top_k_categorical_accuracy": top_k_categorical_accuracy,
    "sparse_top_k_categorical_accuracy": sparse_top_k_categorical_accuracy,
    "precision": Precision(),
    "recall": Recall(),
    "auc": AUC(),
}

# Keras's metric class names, accepted as strings as keras.metrics.get accepts them.
CLASS_NAMES = {
    "CategoricalAccuracy": "categorical_accuracy",
    "SparseCategoricalAccuracy": "sparse_categorical_accuracy",
    "BinaryAccuracy": "binary_accuracy",
    "TopKCategoricalAccuracy": "top_k_categorical_accuracy",
    "SparseTopKCategoricalAccuracy": "sparse_top_k_categorical_accuracy",
    "Precision": "precision",
    "Recall": "recall",
    "AUC": "auc",
    "MeanSquaredError": "mean_squared_error",
    "MeanAbsoluteError": "mean_absolute_error",
}

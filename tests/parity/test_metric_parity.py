"""Each metric, streamed by ``fnlearn.evaluate`` over padded chunks, against Keras and PyTorch.

Keras's metric objects see the whole data in one ``update_state``; fnlearn's see it
in chunks of 64 with a padded last one, so agreement also shows the sums add up
over batches. PyTorch has no metric library of its own: its column is the
expression a PyTorch user writes. It has no AUC at all: AUC is compared with Keras
and with the exact area (``fnlearn.metrics.exact_roc_auc``).
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

import fnlearn as fl
from fnlearn import metrics, nn, parity

pytestmark = pytest.mark.parity

RNG = np.random.default_rng(11)
N = 300  # not a multiple of the chunk: the last chunk is padded
CHUNK = 64
LABELS = RNG.integers(0, 2, (N, 1)).astype(np.float32)
# Scores that lean towards the label, so the metrics are far from trivial.
SCORES = np.clip(0.3 * LABELS + RNG.uniform(0, 0.7, (N, 1)), 0, 1).astype(np.float32)
MULTI_LABELS = RNG.integers(0, 2, (N, 3)).astype(np.float32)
MULTI_SCORES = np.clip(0.25 * MULTI_LABELS + RNG.uniform(0, 0.75, (N, 3)), 0, 1).astype(
    np.float32)
CLASSES = RNG.integers(0, 10, N)
CLASS_SCORES = RNG.normal(0, 1, (N, 10)).astype(np.float32)
CLASS_SCORES[np.arange(N), CLASSES] += 1.0


def identity() -> nn.Layer:
    """A model whose outputs are its inputs: the metrics see the predictions as given."""
    return nn.Layer(lambda key, shape: (shape, {}), lambda params, x, key=None, train=False: x,
                    "identity")


def evaluate(metric, labels, predictions, loss="mse"):
    if loss == "mse":
        labels = labels.astype(np.float32)
    logs = fl.evaluate(identity(), {}, predictions, labels, loss=loss, metrics=[metric],
                       batch_size=CHUNK)
    name = fl.losses.get_metric(metric).name
    return logs[name]


def keras_value(keras_metric, labels, predictions):
    keras_metric.update_state(labels, predictions)
    return float(keras_metric.result())


def check(record, what, ours, theirs, atol=1e-6):
    result = parity.compare(what, np.float64(ours), np.float64(theirs), rtol=0.0, atol=atol)
    record(what, f"{float(ours):.6f} vs {float(theirs):.6f}")
    assert result.passed, str(result)


def test_binary_accuracy(torch, keras, record):
    ours = evaluate("binary_accuracy", LABELS, SCORES)
    check(record, "binary_accuracy vs Keras", ours,
          keras_value(keras.metrics.BinaryAccuracy(), LABELS, SCORES))
    y, p = torch.from_numpy(LABELS), torch.from_numpy(SCORES)
    check(record, "binary_accuracy vs PyTorch", ours, ((p > 0.5).float() == y).float().mean())
    # "accuracy" on a one-column output is binary accuracy, as Keras's compile resolves it.
    assert evaluate("accuracy", LABELS, SCORES) == ours


def test_top_k_accuracies(torch, keras, record):
    one_hot = np.eye(10, dtype=np.float32)[CLASSES]
    top3 = functools.partial(metrics.top_k_categorical_accuracy, k=3)
    sparse_top3 = functools.partial(metrics.sparse_top_k_categorical_accuracy, k=3)
    ours = evaluate(metrics.MeanMetric(top3, "top3"), one_hot, CLASS_SCORES,
                    loss="categorical_crossentropy")
    ours_sparse = evaluate(metrics.MeanMetric(sparse_top3, "top3"), CLASSES, CLASS_SCORES,
                           loss="sparse_categorical_crossentropy")
    check(record, "top_k_categorical_accuracy(k=3) vs Keras", ours,
          keras_value(keras.metrics.TopKCategoricalAccuracy(k=3), one_hot, CLASS_SCORES))
    check(record, "sparse_top_k_categorical_accuracy(k=3) vs Keras", ours_sparse,
          keras_value(keras.metrics.SparseTopKCategoricalAccuracy(k=3), CLASSES, CLASS_SCORES))
    top = torch.from_numpy(CLASS_SCORES).topk(3, dim=1).indices
    check(record, "sparse_top_k_categorical_accuracy(k=3) vs PyTorch", ours_sparse,
          (top == torch.from_numpy(CLASSES)[:, None]).any(1).float().mean())
    default = evaluate("sparse_top_k_categorical_accuracy", CLASSES, CLASS_SCORES,
                       loss="sparse_categorical_crossentropy")
    check(record, "sparse_top_k_categorical_accuracy (k=5) vs Keras", default,
          keras_value(keras.metrics.SparseTopKCategoricalAccuracy(), CLASSES, CLASS_SCORES))


@pytest.mark.parametrize("labels, scores", [(LABELS, SCORES), (MULTI_LABELS, MULTI_SCORES)],
                         ids=["binary", "multi-label"])
def test_precision_and_recall(labels, scores, torch, keras, record):
    precision, recall = evaluate("precision", labels, scores), evaluate("recall", labels, scores)
    check(record, "precision vs Keras", precision,
          keras_value(keras.metrics.Precision(), labels, scores))
    check(record, "recall vs Keras", recall, keras_value(keras.metrics.Recall(), labels, scores))
    y, predicted = torch.from_numpy(labels).bool(), torch.from_numpy(scores) > 0.5
    true_positives = (y & predicted).sum().float()
    check(record, "precision vs PyTorch", precision, true_positives / predicted.sum())
    check(record, "recall vs PyTorch", recall, true_positives / y.sum())
    # Streaming, not a mean of per-chunk values: that mean is measurably different here.
    chunks = [metrics.Precision().result(metrics.Precision().update(
        labels[i:i + CHUNK], scores[i:i + CHUNK], np.ones(len(labels[i:i + CHUNK]))))
        for i in range(0, N, CHUNK)]
    assert abs(float(np.mean(chunks)) - precision) > 1e-4


@pytest.mark.parametrize("curve", ["ROC", "PR"])
@pytest.mark.parametrize("labels, scores", [(LABELS, SCORES), (MULTI_LABELS, MULTI_SCORES)],
                         ids=["binary", "multi-label"])
def test_auc_matches_keras(curve, labels, scores, keras, record):
    ours = evaluate(metrics.AUC(curve=curve), labels, scores)
    theirs = keras_value(keras.metrics.AUC(curve=curve), labels, scores)
    check(record, f"AUC(curve={curve!r}) vs Keras", ours, theirs)
    if curve == "ROC":
        exact = metrics.exact_roc_auc(labels, scores)
        record("200-threshold ROC AUC - exact", f"{ours - exact:+.2e}")
        assert abs(ours - exact) < 2e-3


def test_auc_from_logits_and_exact_on_bucketed_scores(keras, record):
    logits = np.log(SCORES.clip(1e-3, 1 - 1e-3) / (1 - SCORES.clip(1e-3, 1 - 1e-3)))
    ours = evaluate(metrics.AUC(from_logits=True), LABELS, logits)
    check(record, "AUC(from_logits=True) vs Keras", ours,
          keras_value(keras.metrics.AUC(from_logits=True), LABELS, logits))
    # Scores in the middle of the 199 buckets between thresholds: no bucket holds two
    # different scores, so the trapezoids trace the exact ROC curve (ties count one half).
    centers = ((RNG.integers(0, 199, (N, 1)) + 0.5) / 199).astype(np.float32)
    bucketed = evaluate("auc", LABELS, centers)
    check(record, "AUC on bucketed scores vs exact", bucketed,
          metrics.exact_roc_auc(LABELS, centers), atol=1e-6)


def test_keras_metric_class_names(keras, record):
    for name, keras_metric in [("BinaryAccuracy", keras.metrics.BinaryAccuracy()),
                               ("Precision", keras.metrics.Precision()),
                               ("Recall", keras.metrics.Recall()),
                               ("AUC", keras.metrics.AUC())]:
        # Keras numbers its second Precision "precision_1"; the name it logs is the same.
        assert fl.losses.get_metric(name).name == re.sub(r"_\d+$", "", keras_metric.name)
        check(record, f"metrics=[{name!r}] vs Keras", evaluate(name, LABELS, SCORES),
              keras_value(keras_metric, LABELS, SCORES))

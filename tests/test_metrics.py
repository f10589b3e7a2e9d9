"""Streaming metrics through ``fit`` and ``evaluate``: exact over an epoch, named as in Keras."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import fnlearn as fl
from fnlearn import metrics, nn

RNG = np.random.default_rng(3)
X = RNG.normal(size=(200, 6)).astype(np.float32)
Y = (X[:, 0] - X[:, 1] + 0.5 * RNG.normal(size=200) > 0).astype(np.float32)[:, None]


def binary_classifier() -> nn.Layer:
    return nn.serial(nn.Dense(8, "relu"), nn.Dense(1, "sigmoid"))


def test_a_binary_classifier_trains_and_logs_keras_streaming_metrics():
    state, history = fl.fit(binary_classifier(), X[:150], Y[:150], loss="BinaryCrossentropy",
                            optimizer="adam", metrics=["accuracy", "AUC", "precision", "recall"],
                            validation_data=(X[150:], Y[150:]), epochs=5, batch_size=16,
                            verbose=0)
    assert list(history.history) == ["loss", "accuracy", "auc", "precision", "recall",
                                      "val_loss", "val_accuracy", "val_auc", "val_precision",
                                      "val_recall"]
    assert history.history["loss"][-1] < history.history["loss"][0]
    # The validation AUC streamed over chunks is the AUC of all 50 predictions at once.
    scores = fl.predict(binary_classifier(), state.params, X[150:])
    auc = metrics.AUC()
    whole = float(auc.result(auc.update(jnp.asarray(Y[150:]), jnp.asarray(scores),
                                        jnp.ones(50))))
    assert history.history["val_auc"][-1] == pytest.approx(whole, abs=1e-6)
    assert whole > 0.7  # it learned something: chance is 0.5


def test_evaluate_streams_precision_exactly_over_chunks():
    predictions = RNG.uniform(size=(101, 1)).astype(np.float32)
    labels = (RNG.uniform(size=(101, 1)) < predictions).astype(np.float32)
    identity = nn.Layer(lambda key, shape: (shape, {}), lambda p, x, key=None, train=False: x,
                        "identity")
    chunked = fl.evaluate(identity, {}, predictions, labels, loss="mse",
                          metrics=["precision"], batch_size=8)["precision"]
    predicted = predictions > 0.5
    expected = (predicted & (labels == 1)).sum() / predicted.sum()
    assert chunked == pytest.approx(float(expected), abs=1e-7)


@pytest.mark.parametrize("make, message", [
    (lambda: metrics.AUC(num_thresholds=1), r"num_thresholds must be an int > 1, got 1"),
    (lambda: metrics.AUC(curve="roc"), r"curve must be 'ROC' or 'PR', got 'roc'"),
    (lambda: metrics.exact_roc_auc([1, 1], [0.2, 0.4]), r"at least one positive and one neg"),
])
def test_metric_arguments_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_exact_roc_auc_counts_ties_as_one_half():
    assert metrics.exact_roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.5, 0.5]) == 0.875

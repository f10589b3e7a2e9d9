import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn import losses


def test_sparse_crossentropy_from_logits_is_negative_log_softmax_and_stable():
    logits = jnp.array([[2.0, 1.0, 0.1], [1000.0, 0.0, -1000.0]])
    labels = jnp.array([0, 2])
    values = np.asarray(losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    expected0 = -np.log(np.exp(2.0) / np.exp([2.0, 1.0, 0.1]).sum())
    assert values[0] == pytest.approx(expected0, rel=1e-6)
    assert values[1] == pytest.approx(2000.0, rel=1e-6)


def test_sparse_crossentropy_on_probabilities_follows_keras_clipping():
    probs = jnp.array([[0.0, 1.0], [0.25, 0.75]])
    values = np.asarray(losses.sparse_categorical_crossentropy(jnp.array([0, 1]), probs))
    # Keras: clip to [1e-7, 1 - 1e-7], log, then log_softmax renormalizes.
    clipped = np.clip(np.array([[0.0, 1.0]]), 1e-7, 1 - 1e-7)
    expected0 = -np.log(clipped[0, 0] / clipped.sum())
    assert values[0] == pytest.approx(expected0, rel=1e-5)
    assert values[0] == pytest.approx(16.118, abs=1e-3)
    assert values[1] == pytest.approx(-np.log(0.75), rel=1e-6)


def test_sparse_crossentropy_gradient_matches_softmax_minus_onehot():
    logits = jnp.array([[0.5, -1.0, 2.0]])
    grad = jax.grad(lambda z: losses.sparse_categorical_crossentropy(
        jnp.array([1]), z, from_logits=True).sum())(logits)
    expected = np.asarray(jax.nn.softmax(logits)) - np.array([[0, 1, 0]])
    np.testing.assert_allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 3]), r"labels must be in \[0, 3\) for 3 classes; found 3 at index 1"),
    (np.array([-1, 0]), r"found -1 at index 0"),
    (np.array([0.0, 1.0]), "needs integer class labels, got dtype float64"),
    (np.array([0, 1, 2]), r"labels shape \(3,\) does not match predictions shape \(2, 3\)"),
])
def test_bad_sparse_labels_are_refused_on_the_host(labels, message):
    with pytest.raises(ValueError, match=message):
        losses.sparse_categorical_crossentropy(labels, jnp.ones((2, 3)) / 3)


def test_mean_squared_error_is_per_example_and_refuses_broadcasting():
    targets = jnp.array([[1.0, 2.0], [3.0, 5.0]])
    preds = jnp.array([[1.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(losses.mean_squared_error(targets, preds), [2.0, 0.5])
    with pytest.raises(ValueError, match=r"targets shape \(2,\) != predictions shape \(2, 1\)"):
        losses.mean_squared_error(jnp.ones(2), jnp.ones((2, 1)))


def test_accuracy_and_metric_lookup():
    preds = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    np.testing.assert_array_equal(losses.accuracy(jnp.array([1, 1, 1]), preds), [1, 0, 1])
    metric = losses.get_metric("accuracy")
    assert metric.fn is losses.accuracy and metric.name == "accuracy"
    assert losses.get_metric("accuracy") == metric  # equal: compiled programs are reused
    with pytest.raises(ValueError, match="unknown metric 'acc_top5'"):
        losses.get_metric("acc_top5")


def test_nll_loss_picks_the_negative_log_probability_of_the_label():
    log_probs = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
    np.testing.assert_allclose(losses.nll_loss(jnp.array([1, 2]), log_probs),
                               [-np.log(0.2), -np.log(0.5)], rtol=1e-6)
    with pytest.raises(ValueError):
        losses.nll_loss(jnp.array([3, 0]), log_probs)


def test_categorical_crossentropy_on_probabilities_and_logits():
    logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
    soft = jnp.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    want = -np.sum(np.asarray(soft) * np.asarray(jax.nn.log_softmax(logits)), axis=-1)
    np.testing.assert_allclose(losses.categorical_crossentropy(soft, logits, from_logits=True),
                               want, rtol=1e-6)
    np.testing.assert_allclose(losses.categorical_crossentropy(soft, jax.nn.softmax(logits)),
                               want, rtol=1e-5)
    # One-hot labels give the sparse loss of the same classes.
    one_hot = jnp.eye(3)[jnp.array([0, 2])]
    np.testing.assert_allclose(
        losses.categorical_crossentropy(one_hot, logits, from_logits=True),
        losses.sparse_categorical_crossentropy(jnp.array([0, 2]), logits, from_logits=True),
        rtol=1e-6)
    with pytest.raises(ValueError, match="one-hot"):
        losses.categorical_crossentropy(jnp.array([0, 2]), logits)
    np.testing.assert_array_equal(losses.accuracy(one_hot, logits), [1.0, 1.0])


def test_keras_class_names_are_the_losses_and_metrics_they_name():
    from fnlearn import metrics

    assert losses.get_loss("SparseCategoricalCrossentropy") is \
        losses.sparse_categorical_crossentropy
    assert losses.get_loss("CategoricalCrossentropy") is losses.categorical_crossentropy
    assert losses.get_loss("MeanSquaredError") is losses.mean_squared_error
    assert losses.get_loss("BinaryCrossentropy") is losses.binary_crossentropy
    assert losses.get_metric("AUC") == metrics.AUC()
    assert losses.get_metric("SparseCategoricalAccuracy").name == "sparse_categorical_accuracy"
    with pytest.raises(ValueError, match=r"unknown loss 'SparseCrossentropy'; known: .*Keras's "
                                         r"class names \[.*'SparseCategoricalCrossentropy'"):
        losses.get_loss("SparseCrossentropy")


@pytest.mark.parametrize("call, message", [
    (lambda: losses.categorical_crossentropy(jnp.ones((2, 3)) / 3, jnp.ones((2, 3)) / 3,
                                             label_smoothing=1.5),
     r"label_smoothing must be in \[0, 1\], got 1.5"),
    (lambda: losses.binary_crossentropy(jnp.ones((4, 2)), jnp.full((4, 1), 0.5)),
     r"binary_crossentropy: labels shape \(4, 2\) != predictions shape \(4, 1\)"),
    (lambda: losses.huber(jnp.ones((4,)), jnp.ones((4, 1))),
     r"huber: targets shape \(4,\) != predictions shape \(4, 1\); broadcasting"),
])
def test_new_losses_refuse_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_label_smoothing_zero_is_the_plain_loss_and_smoothing_raises_a_confident_loss():
    logits = jnp.array([[4.0, -2.0, 0.0]])
    plain = losses.sparse_categorical_crossentropy(jnp.array([0]), logits, from_logits=True)
    smoothed = losses.sparse_categorical_crossentropy(jnp.array([0]), logits, from_logits=True,
                                                      label_smoothing=0.1)
    assert float(losses.sparse_categorical_crossentropy(
        jnp.array([0]), logits, from_logits=True, label_smoothing=0.0)[0]) == float(plain[0])
    log_probs = jax.nn.log_softmax(logits)[0]
    expected = -(0.9 + 0.1 / 3) * log_probs[0] - 0.1 / 3 * (log_probs[1] + log_probs[2])
    assert float(smoothed[0]) == pytest.approx(float(expected), rel=1e-6)
    assert float(smoothed[0]) > float(plain[0])


def test_accuracy_of_a_one_column_output_thresholds_it():
    # Before: argmax of one column is always 0, so "accuracy" was the share of label 0.
    predictions = jnp.array([[0.9], [0.2], [0.7], [0.4]])
    np.testing.assert_array_equal(losses.accuracy(jnp.array([1, 0, 0, 0]), predictions),
                                  [1, 1, 0, 1])

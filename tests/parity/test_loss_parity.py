"""Each loss against PyTorch's and Keras's, per example, on the same small random data.

Values are compared per example (Keras's functional losses return one value per
example; PyTorch's with ``reduction="none"``, averaged over the last axis where
Keras averages), and gradients with respect to the predictions against PyTorch's
autograd of the mean.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn import losses, parity

pytestmark = pytest.mark.parity

RNG = np.random.default_rng(7)
N = 16
RTOL, ATOL = 1e-5, 1e-6
BINARY = RNG.integers(0, 2, (N, 3)).astype(np.float32)
PROBABILITIES = RNG.uniform(0.02, 0.98, (N, 3)).astype(np.float32)
# Logits up to +-40: a naive log(sigmoid(x)) would overflow to -inf there.
LOGITS = np.concatenate([RNG.normal(0, 3, (N - 2, 3)),
                         [[40.0, -40.0, 0.5], [-40.0, 40.0, -0.5]]]).astype(np.float32)
CLASS_LOGITS = RNG.normal(0, 2, (N, 5)).astype(np.float32)
CLASSES = RNG.integers(0, 5, N).astype(np.int64)
ONE_HOT = np.eye(5, dtype=np.float32)[CLASSES]
TARGETS = RNG.normal(0, 2, (N, 4)).astype(np.float32)
PREDICTIONS = (TARGETS + RNG.normal(0, 1.5, (N, 4))).astype(np.float32)
DISTRIBUTIONS = RNG.dirichlet(np.ones(5), N).astype(np.float32)
PREDICTED_DISTRIBUTIONS = RNG.dirichlet(np.ones(5), N).astype(np.float32)


def check(record, what, ours, theirs, rtol=RTOL, atol=ATOL):
    result = parity.compare(what, ours, theirs, rtol=rtol, atol=atol)
    record(what, f"max abs error {result.max_abs_error:.1e}")
    assert result.passed, str(result)


def torch_grad(torch, fn, predictions):
    """PyTorch's gradient of the mean of ``fn(predictions)`` per example."""
    p = torch.tensor(predictions, requires_grad=True)
    fn(p).mean().backward()
    return p.grad.numpy()


def our_grad(loss, labels, predictions):
    return np.asarray(jax.grad(lambda p: jnp.mean(loss(jnp.asarray(labels), p)))(
        jnp.asarray(predictions)))


CASES = {
    # name: (our loss, labels, predictions, torch per example, keras per example)
    "binary_crossentropy": (
        losses.binary_crossentropy, BINARY, PROBABILITIES,
        lambda t, y, p: t.nn.BCELoss(reduction="none")(p, y).mean(-1),
        lambda k, y, p: k.losses.binary_crossentropy(y, p)),
    "binary_crossentropy(from_logits)": (
        functools.partial(losses.binary_crossentropy, from_logits=True), BINARY, LOGITS,
        lambda t, y, p: t.nn.BCEWithLogitsLoss(reduction="none")(p, y).mean(-1),
        lambda k, y, p: k.losses.binary_crossentropy(y, p, from_logits=True)),
    "binary_crossentropy(label_smoothing=0.2)": (
        functools.partial(losses.binary_crossentropy, from_logits=True, label_smoothing=0.2),
        BINARY, LOGITS,
        # PyTorch has no smoothing argument here: its users smooth the targets themselves.
        lambda t, y, p: t.nn.BCEWithLogitsLoss(reduction="none")(p, y * 0.8 + 0.1).mean(-1),
        lambda k, y, p: k.losses.binary_crossentropy(y, p, from_logits=True,
                                                     label_smoothing=0.2)),
    "categorical_crossentropy(label_smoothing=0.1)": (
        functools.partial(losses.categorical_crossentropy, from_logits=True,
                          label_smoothing=0.1), ONE_HOT, CLASS_LOGITS,
        lambda t, y, p: t.nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1)(p, y),
        lambda k, y, p: k.losses.categorical_crossentropy(y, p, from_logits=True,
                                                          label_smoothing=0.1)),
    "sparse_categorical_crossentropy(label_smoothing=0.1)": (
        functools.partial(losses.sparse_categorical_crossentropy, from_logits=True,
                          label_smoothing=0.1), CLASSES, CLASS_LOGITS,
        lambda t, y, p: t.nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1)(p, y),
        # Keras's sparse loss has no smoothing: the same labels one-hot, smoothed.
        lambda k, y, p: k.losses.categorical_crossentropy(
            np.eye(5, dtype=np.float32)[y], p, from_logits=True, label_smoothing=0.1)),
    "mean_absolute_error": (
        losses.mean_absolute_error, TARGETS, PREDICTIONS,
        lambda t, y, p: t.nn.L1Loss(reduction="none")(p, y).mean(-1),
        lambda k, y, p: k.losses.mean_absolute_error(y, p)),
    "huber(delta=1.5)": (
        functools.partial(losses.huber, delta=1.5), TARGETS, PREDICTIONS,
        lambda t, y, p: t.nn.HuberLoss(reduction="none", delta=1.5)(p, y).mean(-1),
        lambda k, y, p: k.losses.huber(y, p, delta=1.5)),
    "kl_divergence": (
        losses.kl_divergence, DISTRIBUTIONS, PREDICTED_DISTRIBUTIONS,
        lambda t, y, p: t.nn.KLDivLoss(reduction="none")(t.log(p), y).sum(-1),
        lambda k, y, p: k.losses.kl_divergence(y, p)),
    "cosine_similarity": (
        losses.cosine_similarity, TARGETS, PREDICTIONS,
        lambda t, y, p: -t.nn.functional.cosine_similarity(p, y, dim=-1),
        lambda k, y, p: k.losses.cosine_similarity(y, p)),
    "hinge": (
        losses.hinge, BINARY, LOGITS,
        # PyTorch has no binary hinge loss: this is the expression its users write.
        lambda t, y, p: t.clamp(1 - (2 * y - 1) * p, min=0).mean(-1),
        lambda k, y, p: k.losses.hinge(y, p)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_loss_matches_pytorch_and_keras(name, torch, keras, record):
    loss, labels, predictions, torch_loss, keras_loss = CASES[name]
    ours = np.asarray(loss(jnp.asarray(labels), jnp.asarray(predictions)))
    assert ours.shape == (N,)
    theirs_torch = torch_loss(torch, torch.from_numpy(labels), torch.from_numpy(predictions))
    check(record, f"{name} vs PyTorch", ours, theirs_torch)
    check(record, f"{name} vs Keras", ours, keras_loss(keras, labels, predictions))
    expected = torch_grad(torch, lambda p: torch_loss(torch, torch.from_numpy(labels), p),
                          predictions)
    check(record, f"{name} gradient vs PyTorch", our_grad(loss, labels, predictions), expected,
          atol=1e-7)


def test_hinge_takes_minus_one_and_one_labels_as_keras_does(keras, record):
    signs = 2.0 * BINARY - 1.0
    ours = np.asarray(losses.hinge(jnp.asarray(signs), jnp.asarray(LOGITS)))
    check(record, "hinge on -1/1 labels vs Keras", ours, keras.losses.hinge(signs, LOGITS))
    np.testing.assert_array_equal(ours, losses.hinge(jnp.asarray(BINARY), jnp.asarray(LOGITS)))


def test_binary_crossentropy_of_an_n_by_1_output_takes_n_labels(torch, keras, record):
    labels, p = BINARY[:, 0], PROBABILITIES[:, :1]
    ours = np.asarray(losses.binary_crossentropy(jnp.asarray(labels), jnp.asarray(p)))
    check(record, "(N,) labels, (N, 1) outputs vs Keras", ours,
          keras.losses.binary_crossentropy(labels[:, None], p))
    check(record, "(N,) labels, (N, 1) outputs vs PyTorch", ours.mean(),
          torch.nn.BCELoss()(torch.from_numpy(p[:, 0]), torch.from_numpy(labels)))


@pytest.mark.parametrize("name", ["SparseCategoricalCrossentropy", "CategoricalCrossentropy",
                                  "BinaryCrossentropy", "MeanSquaredError",
                                  "MeanAbsoluteError", "Huber", "KLDivergence",
                                  "CosineSimilarity", "Hinge"])
def test_keras_loss_class_names_resolve_to_the_same_loss(name, keras, record):
    """``loss="Huber"`` is what ``keras.losses.get("Huber")`` gives, with its defaults."""
    labels, predictions = {
        "SparseCategoricalCrossentropy": (CLASSES, DISTRIBUTIONS),
        "CategoricalCrossentropy": (ONE_HOT, DISTRIBUTIONS),
        "BinaryCrossentropy": (BINARY, PROBABILITIES),
        "KLDivergence": (DISTRIBUTIONS, PREDICTED_DISTRIBUTIONS),
        "Hinge": (BINARY, LOGITS),
    }.get(name, (TARGETS, PREDICTIONS))
    ours = float(jnp.mean(losses.get_loss(name)(jnp.asarray(labels), jnp.asarray(predictions))))
    theirs = float(keras.losses.get(name)(labels, predictions))
    check(record, f"loss={name!r} vs keras.losses.get", ours, theirs)

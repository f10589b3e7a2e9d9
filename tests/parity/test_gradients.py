"""Gradients of the loss w.r.t. every parameter: jax.grad vs torch autograd and GradientTape.

Keras 3 on TensorFlow computes sparse cross-entropy of a softmax layer's output from the
softmax's *logits* (keras/src/backend/tensorflow/nn.py, ``_get_logits``), while fnlearn's
``from_logits=False`` follows Keras's documented definition: clip the probabilities to
[1e-7, 1 - 1e-7] and take the log. The two agree wherever the clip does not bite, so the
softmax-output checks assert first that it does not; the logits checks compare
``from_logits=True`` with the frameworks' logits losses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn import losses, nn, parity

pytestmark = pytest.mark.parity

# Per element, |ours - theirs| <= RTOL * |theirs| + ATOL_FRACTION * max|theirs| for that
# tensor. A gradient entry is a sum over the batch; where positive and negative terms
# cancel, its value is small while the rounding of the sum is not, so a pure relative
# bound would fail on entries that carry no information. The absolute part is scaled to
# the tensor, so it stays 1e-6 of what matters.
RTOL = 1e-5
ATOL_FRACTION = 1e-6


def close(record, actual: dict, expected: dict, context: str) -> None:
    """Asserts every gradient tensor is within tolerance and records the worst errors."""
    for name in expected:
        for leaf in ("kernel", "bias"):
            scale = float(np.max(np.abs(parity.to_numpy(expected[name][leaf]))))
            result = parity.compare(f"{context} {name}/{leaf}", actual[name][leaf],
                                    expected[name][leaf], rtol=RTOL,
                                    atol=ATOL_FRACTION * scale)
            record(f"{name}/{leaf}", f"max abs error {result.max_abs_error:.1e} "
                   f"(largest |grad| {scale:.1e}), max rel error {result.max_rel_error:.1e}")
            assert result.passed, str(result)


def fnlearn_grads(model, params, x, y, loss):
    return jax.grad(lambda p: jnp.mean(loss(jnp.asarray(y), model.apply(p, jnp.asarray(x)))))(
        params)


def torch_grads(torch, module, x, y, loss, like):
    module.zero_grad()
    loss(module(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    return parity.params_from_torch(grads, like)


def keras_grads(tf, keras_model, x, y, loss, like):
    with tf.GradientTape() as tape:
        value = loss(y, keras_model(x, training=True))
    grads = tape.gradient(value, keras_model.trainable_variables)
    # Keras lists each Dense's kernel then bias, layer by layer, in model order.
    names = sorted(like, key=lambda name: int(name.rsplit("_", 1)[1]))
    assert [v.path.rsplit("/", 1)[1] for v in keras_model.trainable_variables] == \
        ["kernel", "bias"] * len(names)
    return {name: {"kernel": grads[2 * i], "bias": grads[2 * i + 1]}
            for i, name in enumerate(names)}


def torch_keras_style_crossentropy(torch):
    """Keras's documented probability cross-entropy, written in torch: clip, log, renormalize."""

    def loss(probabilities, labels):
        log_probs = torch.log_softmax(torch.log(probabilities.clamp(1e-7, 1 - 1e-7)), dim=-1)
        return torch.nn.functional.nll_loss(log_probs, labels.long())

    return loss


@pytest.fixture(scope="module")
def batch(mnist_subset):
    return mnist_subset[0][:256], mnist_subset[1][:256]


def logits_model():
    return nn.serial(nn.Flatten(), nn.Dense(128, "relu"), nn.Dense(10))


def softmax_model():
    return nn.serial(nn.Flatten(), nn.Dense(128, "relu"), nn.Dense(10, "softmax"))


def regression_model():
    return nn.serial(nn.Dense(16, "tanh"), nn.Dense(1))


def regression_data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(128, 3)).astype(np.float32)
    y = (x @ np.array([[1.5], [-2.0], [0.5]]) + 0.3 * np.sin(3 * x[:, :1])).astype(np.float32)
    return x, y


def crossentropy_from_logits(labels, logits):
    return losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def test_crossentropy_from_logits_vs_torch(torch, batch, record):
    model, (x, y) = logits_model(), batch
    params = nn.init(model, 0, (28, 28))
    module = parity.to_torch_module(model, (28, 28), params)
    expected = torch_grads(torch, module, x, y,
                           lambda out, t: torch.nn.functional.cross_entropy(out, t.long()),
                           params)
    close(record, fnlearn_grads(model, params, x, y, crossentropy_from_logits), expected,
          "logits CE vs torch")


def test_crossentropy_from_logits_vs_gradient_tape(tf, keras, batch, record):
    model, (x, y) = logits_model(), batch
    params = nn.init(model, 0, (28, 28))
    keras_model = parity.to_keras_model(model, (28, 28), params)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    expected = keras_grads(tf, keras_model, x, y, loss, params)
    close(record, fnlearn_grads(model, params, x, y, crossentropy_from_logits), expected,
          "logits CE vs tape")


def test_crossentropy_of_probabilities_vs_torch(torch, batch, record):
    model, (x, y) = softmax_model(), batch
    params = nn.init(model, 0, (28, 28))
    probabilities = np.asarray(model.apply(params, jnp.asarray(x)))
    assert 1e-7 < probabilities.min() and probabilities.max() < 1 - 1e-7, "clip would bite"
    module = parity.to_torch_module(model, (28, 28), params)
    expected = torch_grads(torch, module, x, y, torch_keras_style_crossentropy(torch), params)
    close(record, fnlearn_grads(model, params, x, y, losses.sparse_categorical_crossentropy),
          expected, "probability CE vs torch")


def test_crossentropy_of_probabilities_vs_gradient_tape(tf, keras, batch, record):
    model, (x, y) = softmax_model(), batch
    params = nn.init(model, 0, (28, 28))
    probabilities = np.asarray(model.apply(params, jnp.asarray(x)))
    assert 1e-7 < probabilities.min() and probabilities.max() < 1 - 1e-7, "clip would bite"
    keras_model = parity.to_keras_model(model, (28, 28), params)
    loss = keras.losses.SparseCategoricalCrossentropy()  # from the softmax's logits, see above
    expected = keras_grads(tf, keras_model, x, y, loss, params)
    close(record, fnlearn_grads(model, params, x, y, losses.sparse_categorical_crossentropy),
          expected, "probability CE vs tape")


def test_mean_squared_error_vs_torch(torch, record):
    model, (x, y) = regression_model(), regression_data()
    params = nn.init(model, 0, (3,))
    module = parity.to_torch_module(model, (3,), params)
    expected = torch_grads(torch, module, x, y, torch.nn.MSELoss(), params)
    close(record, fnlearn_grads(model, params, x, y, losses.mean_squared_error), expected,
          "MSE vs torch")


def test_mean_squared_error_vs_gradient_tape(tf, keras, record):
    model, (x, y) = regression_model(), regression_data()
    params = nn.init(model, 0, (3,))
    keras_model = parity.to_keras_model(model, (3,), params)
    expected = keras_grads(tf, keras_model, x, y, keras.losses.MeanSquaredError(), params)
    close(record, fnlearn_grads(model, params, x, y, losses.mean_squared_error), expected,
          "MSE vs tape")


def test_a_wrong_gradient_would_be_caught(torch, batch):
    # The tolerance must not hide a real difference: without clipping's renormalization
    # the difference is tiny, so use a plainly different loss (no mean: a sum) instead.
    model, (x, y) = logits_model(), batch
    params = nn.init(model, 0, (28, 28))
    module = parity.to_torch_module(model, (28, 28), params)
    expected = torch_grads(torch, module, x, y,
                           lambda out, t: torch.nn.functional.cross_entropy(out, t.long()),
                           params)
    summed = fnlearn_grads(model, params, x, y,
                           lambda t, out: len(x) * crossentropy_from_logits(t, out))
    with pytest.raises(AssertionError, match="MISMATCH"):
        close(lambda what, value: None, summed, expected, "summed CE vs torch")

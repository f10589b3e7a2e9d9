"""Forward pass of the article's MNIST model: same weights, same batch, same outputs."""

import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn import nn, parity

pytestmark = pytest.mark.parity

# Softmax outputs, per element: float32 matmuls summed in a different order differ in the
# last bits of the logits (~1e-7 relative); the softmax carries that through, and measured
# errors stay below 2e-6. 1e-5 leaves a margin without hiding a wrong transpose or bias.
RTOL = 1e-5


def article_model(dropout: float = 0.2):
    return nn.serial(nn.Flatten(), nn.Dense(128, "relu"), nn.Dropout(dropout),
                     nn.Dense(10, "softmax"))


def test_fnlearn_weights_in_torch_give_the_same_outputs(torch, mnist_subset, record):
    model = article_model()
    params = nn.init(model, 0, (28, 28))
    x = mnist_subset[0][:256]
    module = parity.to_torch_module(model, (28, 28), params).eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(x))
    result = parity.compare("outputs", model.apply(params, jnp.asarray(x)), expected, rtol=RTOL)
    record("max rel error", f"{result.max_rel_error:.2e}")
    assert result.passed, str(result)


def test_torch_weights_in_fnlearn_give_the_same_outputs(torch, mnist_subset, record):
    model = article_model()
    torch.manual_seed(0)
    module = parity.to_torch_module(model, (28, 28)).eval()
    params = parity.params_from_torch(module, like=nn.init(model, 0, (28, 28)))
    x = mnist_subset[0][256:512]
    with torch.no_grad():
        expected = module(torch.from_numpy(x))
    result = parity.compare("outputs", model.apply(params, jnp.asarray(x)), expected, rtol=RTOL)
    record("max rel error", f"{result.max_rel_error:.2e}")
    assert result.passed, str(result)


def test_fnlearn_weights_in_keras_give_the_same_outputs(keras, mnist_subset, record):
    model = article_model()
    params = nn.init(model, 1, (28, 28))
    x = mnist_subset[0][:256]
    keras_model = parity.to_keras_model(model, (28, 28), params)
    expected = keras_model(x, training=False)
    result = parity.compare("outputs", model.apply(params, jnp.asarray(x)), expected, rtol=RTOL)
    record("max rel error", f"{result.max_rel_error:.2e}")
    assert result.passed, str(result)


def test_keras_weights_in_fnlearn_give_the_same_outputs(keras, mnist_subset, record):
    model = article_model()
    keras.utils.set_random_seed(0)
    keras_model = parity.to_keras_model(model, (28, 28))
    params = parity.params_from_keras(keras_model, like=nn.init(model, 0, (28, 28)))
    x = mnist_subset[0][256:512]
    expected = keras_model(x, training=False)
    result = parity.compare("outputs", model.apply(params, jnp.asarray(x)), expected, rtol=RTOL)
    record("max rel error", f"{result.max_rel_error:.2e}")
    assert result.passed, str(result)


def test_a_transposed_kernel_would_be_caught(torch, mnist_subset):
    # The check must be able to fail: a square hidden layer loaded without its transpose
    # runs without a shape error and gives outputs far outside the tolerance.
    model = nn.serial(nn.Flatten(), nn.Dense(784, "relu"), nn.Dense(10, "softmax"))
    params = nn.init(model, 0, (28, 28))
    module = parity.to_torch_module(model, (28, 28), params).eval()
    with torch.no_grad():
        module[1].weight.copy_(module[1].weight.T.clone())
        expected = module(torch.from_numpy(mnist_subset[0][:64]))
    result = parity.compare("outputs", model.apply(params, jnp.asarray(mnist_subset[0][:64])),
                            expected, rtol=RTOL)
    assert not result.passed
    assert result.max_rel_error > 1e-3


def test_normalize_layer_rounds_like_fnlearn(torch, keras):
    # Normalize(0, 255) divides; a reference that multiplied by 1/255 would differ in the
    # last bit for about half of the 256 byte values, so this asserts exact equality.
    model = nn.serial(nn.Normalize(0.0, 255.0), nn.Flatten())
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    ours = np.asarray(model.apply({}, jnp.asarray(x)))
    torch_out = parity.to_torch_module(model, (16, 16))(torch.from_numpy(x)).numpy()
    keras_out = np.asarray(parity.to_keras_model(model, (16, 16))(x.astype(np.float32)))
    np.testing.assert_array_equal(ours, torch_out)
    np.testing.assert_array_equal(ours, keras_out)

"""Dropout in training mode: the same statistics in fnlearn, torch.nn.Dropout and Keras.

The masks come from different random generators, so only statistics can agree. On an
input of ones: the fraction of zeros estimates the rate, every kept value must equal
1 / (1 - rate), and the mean of the output must stay 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn import nn

pytestmark = pytest.mark.parity

SIZE = 200_000
# Five standard deviations of a binomial fraction: a correct layer fails about once in
# 1.7 million runs; at 200,000 draws a rate off by 0.01 is caught, as is stax's
# keep-probability mix-up (0.8 dropped for rate 0.2).
SIGMAS = 5.0


def dropped_fnlearn(rate, x):
    return np.asarray(nn.Dropout(rate).apply({}, jnp.asarray(x), key=jax.random.key(0),
                                             train=True))


def dropped_torch(torch, rate, x):
    torch.manual_seed(0)
    layer = torch.nn.Dropout(rate).train()
    return layer(torch.from_numpy(x)).numpy()


def dropped_keras(keras, rate, x):
    return np.asarray(keras.layers.Dropout(rate, seed=0)(x, training=True))


def check_statistics(record, framework, rate, y):
    kept = y != 0
    fraction = 1.0 - kept.mean()
    sigma = np.sqrt(rate * (1 - rate) / y.size)
    record(f"{framework} rate {rate}", f"dropped {fraction:.5f} ({(fraction - rate) / sigma:+.2f} "
           "sigma)")
    assert abs(fraction - rate) <= SIGMAS * sigma, (framework, fraction)
    # Kept values are scaled, not just passed: divide vs multiply by the reciprocal may
    # differ in the last bit, hence rtol 1e-6.
    np.testing.assert_allclose(y[kept], 1.0 / (1.0 - rate), rtol=1e-6)
    # The mean of y is (kept fraction) / (1 - rate); its standard deviation follows from
    # the binomial one.
    assert abs(y.mean() - 1.0) <= SIGMAS * sigma / (1 - rate), (framework, y.mean())


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_same_statistics(torch, keras, record, rate):
    x = np.ones((SIZE,), np.float32)
    check_statistics(record, "fnlearn", rate, dropped_fnlearn(rate, x))
    check_statistics(record, "torch", rate, dropped_torch(torch, rate, x))
    check_statistics(record, "keras", rate, dropped_keras(keras, rate, x))


def test_inference_mode_is_the_identity_everywhere(torch, keras):
    x = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(nn.Dropout(0.5).apply({}, jnp.asarray(x))), x)
    np.testing.assert_array_equal(torch.nn.Dropout(0.5).eval()(torch.from_numpy(x)).numpy(), x)
    np.testing.assert_array_equal(np.asarray(keras.layers.Dropout(0.5)(x, training=False)), x)

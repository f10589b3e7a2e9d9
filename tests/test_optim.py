import jax.numpy as jnp
import numpy as np
import optax

from fnlearn import optim

GRADS = [np.array([0.1, -0.02, 3e-5], np.float32), np.array([-0.3, 0.01, 1e-6], np.float32),
         np.array([0.05, 0.05, -2e-5], np.float32)]


def run(optimizer, params):
    state = optimizer.init(jnp.asarray(params))
    p = jnp.asarray(params)
    for g in GRADS:
        updates, state = optimizer.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, updates)
    return np.asarray(p)


def test_keras_adam_reproduces_keras_update_rule():
    # keras.optimizers.Adam.update_step, written out in float64.
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    p = np.array([1.0, -2.0, 0.5])
    m = np.zeros(3)
    v = np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        m += (g - m) * (1 - b1)
        v += (g.astype(np.float64) ** 2 - v) * (1 - b2)
        p -= alpha * m / (np.sqrt(v) + eps)
    got = run(optim.keras_adam(), np.array([1.0, -2.0, 0.5], np.float32))
    np.testing.assert_allclose(got, p, rtol=0, atol=2e-7)
    # Epsilon placement matters for small gradients: plain optax.adam(eps=1e-7) differs.
    plain = run(optax.adam(1e-3, eps=1e-7), np.array([1.0, -2.0, 0.5], np.float32))
    assert abs(plain[2] - p[2]) > 1e-5


def test_torch_adam_reproduces_torch_update_rule():
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    p = np.array([1.0, -2.0, 0.5])
    m = np.zeros(3)
    v = np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g.astype(np.float64) ** 2
        denom = np.sqrt(v) / np.sqrt(1 - b2**t) + eps
        p -= lr / (1 - b1**t) * m / denom
    got = run(optim.torch_adam(), np.array([1.0, -2.0, 0.5], np.float32))
    np.testing.assert_allclose(got, p, rtol=0, atol=2e-7)


def test_sgd_presets():
    got = run(optim.torch_sgd(0.1), np.zeros(3, np.float32))
    np.testing.assert_allclose(got, -0.1 * sum(GRADS), rtol=1e-6)
    got = run(optim.keras_sgd(), np.zeros(3, np.float32))
    np.testing.assert_allclose(got, -0.01 * sum(GRADS), rtol=1e-6)

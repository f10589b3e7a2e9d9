import jax
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


def test_keras_adam_takes_a_schedule():
    schedule = optax.linear_schedule(1e-3, 1e-4, transition_steps=10)
    by_schedule = optim.keras_adam(schedule)
    state = by_schedule.init(jnp.zeros(3))
    p = jnp.asarray([1.0, -2.0, 0.5])
    for g in GRADS:
        _, state = by_schedule.update(jnp.asarray(g), state, p)
    # inject_hyperparams records the rate of the last update: schedule(count - 1).
    np.testing.assert_allclose(state.hyperparams["learning_rate"], schedule(2), rtol=1e-6)
    constant = run(optim.keras_adam(optax.constant_schedule(1e-3)), np.ones(3, np.float32))
    np.testing.assert_array_equal(constant, run(optim.keras_adam(1e-3), np.ones(3, np.float32)))


def test_training_md_schedule_snippet_runs_through_fit():
    import re
    from pathlib import Path

    import fnlearn as fl
    from fnlearn import nn

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S)
                   if "cosine_decay_schedule" in block)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] > x[:, 1]).astype(np.int32)
    scope = {"fl": fl, "x": x, "y": y,
             "model": nn.serial(nn.Dense(16, "relu"), nn.Dense(2, "softmax"))}
    exec(snippet, scope)  # noqa: S102 - the documented code, run as written
    state, history, schedule = scope["state"], scope["history"], scope["schedule"]
    steps = 10 * 7  # ceil(200 / 32) steps in each of 10 epochs
    assert int(state.step) == steps and len(history.epoch) == 10
    assert float(schedule(steps)) == 0.0 and float(schedule(0)) == np.float32(1e-3)
    counts = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.dtype == jnp.int32]
    assert [int(c) for c in counts] == [steps, steps]  # adam's and the schedule's counts
    assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]

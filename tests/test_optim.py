import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnlearn as fl
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


def test_step_lr_decays_once_per_step_size_epochs():
    schedule = optim.step_lr(1.0, step_size=2, gamma=0.7)
    got = [float(schedule(jnp.int32(e))) for e in range(5)]
    np.testing.assert_allclose(got, [1.0, 1.0, 0.7, 0.7, 0.49], rtol=1e-6)
    with pytest.raises(ValueError, match="step_size"):
        optim.step_lr(1.0, step_size=0)


def test_epoch_schedule_scales_by_the_epoch_it_is_given_and_needs_one():
    scale = optim.scale_by_epoch_schedule(optim.step_lr(2.0, gamma=0.5))
    state = scale.init(jnp.zeros(2))
    assert float(optim.epoch_learning_rate(state)) == 2.0
    updates, state = scale.update(jnp.array([1.0, -4.0]), state, epoch=jnp.int32(3))
    np.testing.assert_allclose(updates, [-0.25, 1.0])
    assert float(optim.epoch_learning_rate(state)) == 0.25
    assert optim.epoch_learning_rate(optax.adam(1e-3).init(jnp.zeros(2))) is None
    with pytest.raises(ValueError, match="needs the epoch"):
        scale.update(jnp.ones(2), state)


def test_train_step_passes_the_epoch_to_an_extra_args_optimizer():
    model = fl.nn.serial(fl.nn.Dense(1))
    x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    sgd_like = optax.chain(optax.identity(),
                           optim.scale_by_epoch_schedule(optim.step_lr(1.0, gamma=0.1)))
    state = fl.init_state(model, sgd_like, (2,), seed=0)
    moved = []
    for epoch in (0, 2):
        start = state._replace(epoch=jnp.int32(epoch))
        new, _ = fl.train_step(start, x, y, model=model, loss="mse", optimizer=sgd_like)
        moved.append(float(new.params["dense_0"]["bias"][0] - start.params["dense_0"]["bias"][0]))
    # Same gradient, learning rate 1.0 at epoch 0 and 0.01 at epoch 2.
    assert moved[1] == pytest.approx(moved[0] * 0.01, rel=1e-5)
    assert moved[0] != 0


@pytest.mark.parametrize("verbose", [0, 2])
def test_fit_logs_the_epoch_learning_rate(verbose):
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = fl.nn.serial(fl.nn.Dense(2, activation="softmax"))
    optimizer = optim.torch_adadelta(schedule=optim.step_lr(1.0, step_size=1, gamma=0.7))
    _, history = fl.fit(model, x, y, loss="sparse_categorical_crossentropy",
                        optimizer=optimizer, epochs=3, batch_size=8, verbose=verbose)
    np.testing.assert_allclose(history.history["learning_rate"], [1.0, 0.7, 0.49], rtol=1e-6)
    _, plain = fl.fit(model, x, y, loss="sparse_categorical_crossentropy",
                      optimizer=optim.torch_adam(), epochs=1, batch_size=8, verbose=0)
    assert "learning_rate" not in plain.history


def test_torch_adadelta_reproduces_torchs_update_rule_with_weight_decay():
    lr, rho, eps, wd = 0.5, 0.9, 1e-6, 0.01
    p = np.array([1.0, -2.0, 0.5])
    square_avg, acc_delta = np.zeros(3), np.zeros(3)
    for g in GRADS:
        g = g + wd * p
        square_avg = rho * square_avg + (1 - rho) * g * g
        delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta * delta
        p = p - lr * delta
    optimizer = optim.torch_adadelta(lr, weight_decay=wd)
    state = optimizer.init(jnp.zeros(3))
    q = jnp.array([1.0, -2.0, 0.5])
    for g in GRADS:
        updates, state = optimizer.update(jnp.asarray(g), state, q, epoch=jnp.int32(0))
        q = optax.apply_updates(q, updates)
    np.testing.assert_allclose(np.asarray(q), p, rtol=1e-5, atol=1e-7)


def test_train_step_calls_a_plain_gradient_transformation_without_the_epoch():
    def update(grads, state, params=None):  # no **extra_args: an epoch keyword would fail
        return jax.tree.map(lambda g: -0.5 * g, grads), state

    plain = optax.GradientTransformation(lambda params: optax.EmptyState(), update)
    assert not isinstance(plain, optax.GradientTransformationExtraArgs)
    model = fl.nn.serial(fl.nn.Dense(1))
    state = fl.init_state(model, plain, (2,), seed=0)
    new, logs = fl.train_step(state, jnp.ones((4, 2)), jnp.zeros((4, 1)), model=model,
                              loss="mse", optimizer=plain)
    assert int(new.step) == 1 and not bool(logs["nonfinite"])
    assert float(jnp.abs(new.params["dense_0"]["bias"] - state.params["dense_0"]["bias"])[0]) > 0


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

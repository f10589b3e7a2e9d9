"""float16 training: ``fnlearn.optim.loss_scale`` (Keras's ``LossScaleOptimizer``) and the
``mixed_float16`` policy that ``fit`` trains with it.

The step multiplies the loss by the scale before differentiating; the optimizer divides
the gradients back, skips a step whose gradients overflowed (halving the scale) and
doubles the scale after ``growth_interval`` finite steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnlearn as fl
from fnlearn import nn
from tests.test_policy import products

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)


def grads_of(value):
    return {"w": jnp.full((3,), value, jnp.float32)}


def test_finite_steps_apply_the_unscaled_gradient_and_grow_the_scale_on_schedule():
    scaled = fl.optim.loss_scale(optax.sgd(0.5), initial_scale=8.0, growth_interval=3)
    params = {"w": jnp.zeros(3)}
    state = scaled.init(params)
    assert state.scale == 8.0 and state.good_steps == 0
    scales = []
    for _ in range(7):
        before = float(state.scale)
        updates, state = scaled.update(grads_of(16.0), state, params)
        # The gradient of the scaled loss, 16, unscaled by the scale it was taken at
        # (16 / 8 = 2 at first): sgd(0.5) moves by -0.5 times that.
        np.testing.assert_array_equal(updates["w"], np.full(3, -0.5 * 16.0 / before))
        scales.append(float(state.scale))
    assert scales == [8.0, 8.0, 16.0, 16.0, 16.0, 32.0, 32.0]
    assert int(state.good_steps) == 1


def test_a_non_finite_gradient_skips_the_step_keeps_the_moments_and_halves_the_scale():
    scaled = fl.optim.loss_scale(optax.adam(0.1), initial_scale=4.0, min_scale=1.0)
    params = {"w": jnp.zeros(3)}
    state = scaled.init(params)
    _, state = scaled.update(grads_of(1.0), state, params)
    moments = jax.tree.map(np.asarray, state.inner)
    updates, skipped = scaled.update({"w": jnp.array([1.0, jnp.inf, 0.0])}, state, params)
    np.testing.assert_array_equal(updates["w"], np.zeros(3))
    jax.tree.map(np.testing.assert_array_equal, skipped.inner, moments)
    assert float(skipped.scale) == 2.0 and int(skipped.good_steps) == 0
    _, lower = scaled.update(grads_of(jnp.nan), skipped, params)
    _, floor = scaled.update(grads_of(jnp.nan), lower, params)
    assert float(lower.scale) == float(floor.scale) == 1.0  # min_scale


def test_the_same_arguments_give_the_same_optimizer_and_bad_ones_are_named():
    adam = fl.optim.keras_adam()
    assert fl.optim.loss_scale(adam) is fl.optim.loss_scale(adam)
    assert fl.optim.is_loss_scaled(fl.optim.loss_scale(adam))
    assert not fl.optim.is_loss_scaled(adam)
    with pytest.raises(ValueError, match="growth_interval"):
        fl.optim.loss_scale(adam, growth_interval=0)
    with pytest.raises(ValueError, match="factor"):
        fl.optim.loss_scale(adam, factor=1.0)


def test_the_epoch_keyword_reaches_an_epoch_scheduled_optimizer():
    scaled = fl.optim.loss_scale(fl.optim.torch_adadelta(schedule=fl.optim.step_lr(
        1.0, step_size=1, gamma=0.5)))
    params = {"w": jnp.zeros(3)}
    _, state = scaled.update(grads_of(1.0), scaled.init(params), params, epoch=jnp.int32(2))
    assert float(fl.optim.epoch_learning_rate(state)) == 0.25


def tiny_gradient_model():
    return nn.serial(nn.Dense(4, use_bias=False), nn.Dense(1, use_bias=False))


def tiny_loss(y, p):
    # So small that its gradients, ~1e-9, are below float16's smallest subnormal (6e-8).
    return 1e-8 * jnp.sum((p - y) ** 2, axis=-1)


def first_layer_update(scale: float) -> np.ndarray:
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    y = np.ones((4, 1), np.float32)
    optimizer = fl.optim.loss_scale(optax.sgd(1e6), initial_scale=scale)
    model = nn.with_policy(tiny_gradient_model(), "mixed_float16")
    state = fl.init_state(model, optimizer, (4,), seed=0)
    before = np.asarray(state.params["dense_0"]["kernel"])
    new, _ = fl.train_step(state, x, y, model=model, loss=tiny_loss, optimizer=optimizer)
    return np.asarray(new.params["dense_0"]["kernel"]) - before


def test_the_step_scales_the_loss_so_float16_gradients_survive():
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    y = np.ones((4, 1), np.float32)
    model = tiny_gradient_model()
    state = fl.init_state(model, optax.sgd(1e6), (4,), seed=0)
    before = np.asarray(state.params["dense_0"]["kernel"])
    exact, _ = fl.train_step(state, x, y, model=model, loss=tiny_loss,
                             optimizer=optax.sgd(1e6))
    want = np.asarray(exact.params["dense_0"]["kernel"]) - before
    assert np.abs(want).max() > 1e-4
    # Unscaled, float16's backward pass flushes the gradient to zero: no update.
    np.testing.assert_array_equal(first_layer_update(1.0), 0.0)
    # Scaled by 2**15 it survives, to float16's precision.
    np.testing.assert_allclose(first_layer_update(2.0 ** 15), want, rtol=2e-2, atol=1e-6)


def test_the_float16_step_multiplies_in_float16_and_keeps_float32_master_weights():
    model = nn.serial(nn.Normalize(0, 255), nn.Conv2D(8, 3, activation="relu"), nn.Flatten(),
                      nn.Dense(10))
    optimizer = fl.optim.loss_scale(fl.optim.keras_adam())
    state = fl.init_state(model, optimizer, (8, 8, 1))
    x, y = jnp.zeros((4, 8, 8, 1), jnp.uint8), jnp.zeros((4,), jnp.int32)

    def step(state, x, y):
        return fl.train_step(state, x, y, model=nn.with_policy(model, "mixed_float16"),
                             loss="sparse_categorical_crossentropy", optimizer=optimizer)

    assert products(step, state, x, y) == {(("float16", "float16"), "float32")}
    new_state, _ = jax.eval_shape(step, state, x, y)
    floats = {leaf.dtype for leaf in jax.tree.leaves((new_state.params, new_state.opt_state))
              if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert floats == {F32}


def mnist_sample():
    (x, y), (xt, yt) = fl.data.load_mnist(source="sample")
    return x, y, xt, yt


def test_fit_under_mixed_float16_wraps_the_optimizer_and_learns_as_float32_does():
    x, y, xt, yt = mnist_sample()
    accuracy, states = {}, {}
    for policy in ("float32", "mixed_float16"):
        state, history = fl.fit(fl.models.article_mlp(), x, y,
                                loss="sparse_categorical_crossentropy", optimizer="adam",
                                metrics=["accuracy"], epochs=3, verbose=0, seed=0,
                                policy=policy, validation_data=(xt, yt))
        accuracy[policy], states[policy] = history.history["val_accuracy"][-1], state
    mixed = states["mixed_float16"]
    assert isinstance(mixed.opt_state, fl.optim.LossScaleState)
    assert float(mixed.opt_state.scale) == 2.0 ** 15  # no overflow, fewer than 2000 steps
    assert int(mixed.opt_state.good_steps) == int(mixed.step)
    assert {leaf.dtype for leaf in jax.tree.leaves(mixed.params)} == {F32}
    assert accuracy["float32"] > 0.8
    assert abs(accuracy["mixed_float16"] - accuracy["float32"]) < 0.02, accuracy


def test_fit_recovers_from_a_scale_that_overflows_by_skipping_and_halving():
    x, y, xt, yt = mnist_sample()
    optimizer = fl.optim.loss_scale(fl.optim.keras_adam(), initial_scale=2.0 ** 60)
    state, history = fl.fit(fl.models.article_mlp(), x, y,
                            loss="sparse_categorical_crossentropy", optimizer=optimizer,
                            metrics=["accuracy"], epochs=2, verbose=0, seed=0,
                            policy="mixed_float16", validation_data=(xt, yt))
    scale = float(state.opt_state.scale)
    # float16 overflows above 65504: the scale came down by halving, one skipped step each
    # (measured: to 2**20, where this model's largest backward values fit).
    assert scale < 2.0 ** 24
    skipped = int(np.log2(2.0 ** 60 / scale))  # halvings, each a skipped step
    assert skipped > 36
    # The finite steps since the last skip: at most the steps that were not skipped.
    assert 0 < int(state.opt_state.good_steps) <= int(state.step) - skipped
    assert history.history["val_accuracy"][-1] > 0.8
    assert fl.optim.loss_scale(fl.optim.keras_adam(), initial_scale=2.0 ** 60) is optimizer

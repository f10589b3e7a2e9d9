import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnlearn as fl
from fnlearn import nn


def article_model():
    return nn.serial(nn.Flatten(), nn.Dense(128, activation="relu"), nn.Dropout(0.2),
                     nn.Dense(10, activation="softmax"))


def test_article_model_has_101770_parameters_and_keras_style_summary():
    model = article_model()
    params = nn.init(model, 0, (28, 28))
    assert nn.count_params(params) == 101_770
    assert set(params) == {"dense_0", "dense_1"}
    assert params["dense_0"]["kernel"].shape == (784, 128)
    text = nn.summary(model, (28, 28))
    assert "Total params: 101,770" in text
    assert "(None, 784)" in text and "(None, 128)" in text and "(None, 10)" in text
    assert "100,480" in text and "1,290" in text


def test_keras_init_is_glorot_uniform_kernel_and_zero_bias():
    params = nn.init(nn.Dense(128), 1, (784,))
    limit = math.sqrt(6 / (784 + 128))
    kernel = np.asarray(params["kernel"])
    assert np.abs(kernel).max() <= limit
    # Uniform(-l, l) has standard deviation l / sqrt(3); 100k draws pin it to ~0.3%.
    assert kernel.std() == pytest.approx(limit / math.sqrt(3), rel=0.01)
    assert not np.asarray(params["bias"]).any()


def test_torch_init_is_uniform_inverse_sqrt_fan_in_for_weight_and_bias():
    params = nn.init(nn.Dense(256, init="torch"), 2, (400,))
    bound = 1 / math.sqrt(400)
    for leaf in (params["kernel"], params["bias"]):
        values = np.asarray(leaf)
        assert np.abs(values).max() <= bound
        assert values.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert np.asarray(params["bias"]).std() > 0


def test_dropout_rate_is_the_fraction_dropped_with_inverted_scaling():
    layer = nn.Dropout(0.2)
    x = jnp.ones((1000, 100))
    y = np.asarray(layer.apply({}, x, key=jax.random.key(0), train=True))
    dropped = np.mean(y == 0)
    # 100k Bernoulli(0.2) draws: standard error 0.0013, so 0.01 is ~8 sigma.
    assert abs(dropped - 0.2) < 0.01
    np.testing.assert_allclose(y[y != 0], 1 / 0.8, rtol=1e-6)
    assert np.asarray(layer.apply({}, x, train=False)).tolist() == np.ones((1000, 100)).tolist()
    with pytest.raises(ValueError, match="needs a PRNG key"):
        layer.apply({}, x, train=True)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        nn.Dropout(1.0)


def test_serial_gives_each_layer_its_own_key():
    model = nn.serial(nn.Dense(4), nn.Dense(4))
    params = nn.init(model, 0, (4,))
    assert not np.array_equal(params["dense_0"]["kernel"], params["dense_1"]["kernel"])


def test_normalize_matches_the_articles_division_bit_for_bit():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 256)
    out = np.asarray(nn.Normalize(0.0, 255.0).apply({}, jnp.asarray(pixels)))
    assert out.dtype == np.float32
    assert np.array_equal(out, (pixels / 255.0).astype(np.float32))


def test_layers_unpack_like_stax_and_reject_bad_arguments():
    init_fn, apply_fn = nn.Dense(3)
    shape, params = init_fn(jax.random.key(0), (5,))
    assert shape == (3,) and apply_fn(params, jnp.ones((2, 5))).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown activation 'gelu2'"):
        nn.Dense(3, activation="gelu2")
    with pytest.raises(TypeError, match="argument 1 is int"):
        nn.serial(nn.Dense(3), 7)


def test_flax_linen_module_trains_with_fit_like_an_fnlearn_model():
    import flax.linen as linen

    class MLP(linen.Module):
        @linen.compact
        def __call__(self, x, train: bool = False):
            x = linen.relu(linen.Dense(16)(x))
            x = linen.Dropout(0.1, deterministic=not train)(x)
            return linen.Dense(3)(x)

    model = nn.from_flax(MLP(), train_argument="train")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)
    loss = "sparse_categorical_crossentropy"
    from functools import partial

    logits_loss = partial(fl.losses.sparse_categorical_crossentropy, from_logits=True)
    state, history = fl.fit(model, x, y, loss=logits_loss, optimizer=fl.optim.keras_adam(1e-2),
                            metrics=["accuracy"], epochs=20, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.9
    # The same parameters in an fnlearn model compute the same function.
    twin = nn.serial(nn.Dense(16, activation="relu"), nn.Dropout(0.1), nn.Dense(3))
    twin_params = {"dense_0": state.params["Dense_0"], "dense_1": state.params["Dense_1"]}
    np.testing.assert_allclose(fl.predict(model, state.params, x),
                               fl.predict(twin, twin_params, x), rtol=1e-6, atol=1e-6)
    assert loss  # named losses resolve too:
    assert fl.evaluate(twin, twin_params, x, y, loss=logits_loss)["loss"] < 0.3


def test_apply_takes_a_key_as_init_does_typed_raw_or_an_int():
    import jax

    from fnlearn import nn

    model = nn.serial(nn.Dense(4), nn.Dropout(0.5))
    params = nn.init(model, 0, (3,))
    x = np.ones((2, 3), np.float32)
    by_int, _ = nn.apply(model, params, x, key=7, train=True)
    typed, _ = nn.apply(model, params, x, key=jax.random.key(7), train=True)
    raw, _ = nn.apply(model, params, x, key=jax.random.PRNGKey(7), train=True)
    assert np.array_equal(by_int, typed) and np.array_equal(by_int, raw)

"""Layer identity and names: equal layers share compilations, names key the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnlearn as fl
from fnlearn import nn


def test_layers_built_alike_are_equal_and_hash_alike():
    assert nn.Dense(10, "relu") == nn.Dense(10, "relu")
    assert hash(nn.Dense(10, "relu")) == hash(nn.Dense(10, "relu"))
    assert nn.Dense(10, "relu") != nn.Dense(10)
    assert nn.Dense(10) != nn.Dense(10, name="head")
    assert nn.Dropout(0) != nn.Dropout(0.0)  # types count: an int and a float are two arguments
    assert nn.Conv2D(8, 3, padding="same") == nn.Conv2D(8, 3, padding="same")
    assert fl.models.article_mlp() == fl.models.article_mlp()
    assert fl.models.keras_convnet() != fl.models.article_mlp()


def test_a_layer_of_your_own_compares_by_identity():
    def init(key, shape):
        return shape, {}

    def apply(params, x, *, key=None, train=False):
        return x

    mine = nn.Layer(init, apply, "mine")
    assert mine == mine and mine != nn.Layer(init, apply, "mine")
    assert nn.serial(mine, nn.Dense(2)) == nn.serial(mine, nn.Dense(2))
    assert nn.serial(mine, nn.Dense(2)) != nn.serial(nn.Layer(init, apply, "mine"), nn.Dense(2))


def test_rebuilding_the_article_model_compiles_nothing_new():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 64).astype(np.int32)
    options = dict(loss="sparse_categorical_crossentropy", optimizer=fl.optim.keras_adam(),
                   metrics=["accuracy"], batch_size=32, verbose=0)
    state, _ = fl.fit(fl.models.article_mlp(), x, y, **options)
    fl.predict(fl.models.article_mlp(), state.params, x)
    with fl.count_compilations() as compiled:
        fl.fit(fl.models.article_mlp(), x, y, **options)
        fl.predict(fl.models.article_mlp(), state.params, x)
    assert sum(compiled.values()) == 0, compiled
    with fl.count_compilations() as compiled:
        fl.fit(nn.serial(*fl.models.article_mlp().children[:-1], nn.Dense(10, "softmax",
                                                                          name="out")),
               x, y, **options)
    assert compiled["jit(_train_epochs)"] == 1  # another model: its own program


def test_names_count_layers_of_a_kind_so_inserting_another_kind_renames_nothing():
    plain = nn.serial(nn.Flatten(), nn.Dense(8, "relu"), nn.Dense(2))
    normalized = nn.serial(nn.Normalize(0, 255), nn.Flatten(), nn.Dense(8, "relu"), nn.Dense(2))
    assert plain.config["names"] == ["flatten_0", "dense_0", "dense_1"]
    assert normalized.config["names"] == ["normalize_0", "flatten_0", "dense_0", "dense_1"]
    a, b = nn.init(plain, 0, (4,)), nn.init(normalized, 0, (4,))
    assert set(a) == set(b) == {"dense_0", "dense_1"}


def test_layers_keep_the_names_given_and_numbering_skips_them():
    model = nn.serial(nn.Dense(8, name="hidden"), nn.Dense(4, name="dense_0"), nn.Dense(2))
    assert model.config["names"] == ["hidden", "dense_0", "dense_1"]
    params = nn.init(model, 0, (3,))
    assert params["hidden"]["kernel"].shape == (3, 8) and params["dense_1"]["bias"].shape == (2,)


def test_duplicate_names_are_refused_naming_both_layers():
    with pytest.raises(ValueError, match=r"serial: two layers are named 'hidden': layer 0 "
                                         r"\(dense\) and layer 2 \(conv2d\)"):
        nn.serial(nn.Dense(8, name="hidden"), nn.ReLU(), nn.Conv2D(3, 1, name="hidden"))
    with pytest.raises(ValueError, match="name must be a non-empty string without '/'"):
        nn.Dense(3, name="a/b")


def test_one_layer_listed_twice_in_serial_shares_its_weights():
    square = nn.Dense(4, use_bias=False)
    model = nn.serial(square, nn.ReLU(), square)
    params = nn.init(model, 0, (4,))
    assert list(params) == ["dense_0"]
    x = jnp.ones((2, 4))
    kernel = params["dense_0"]["kernel"]
    np.testing.assert_allclose(model.apply(params, x), jax.nn.relu(x @ kernel) @ kernel,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="layer 'dense_0' is called more than once"):
        nn.init(nn.serial(square, nn.Dense(3), square), 0, (4,))

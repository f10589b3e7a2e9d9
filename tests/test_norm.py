import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnlearn as fl
from fnlearn import nn


def batch_norm_state(layer, shape):
    _, params, state = layer.init(jax.random.key(0), shape)
    return params, state


@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_padding_rows_never_enter_batch_or_running_statistics(convention):
    rng = np.random.default_rng(0)
    real = rng.normal(2.0, 3.0, size=(100, 4, 4, 3)).astype(np.float32)
    # Padding rows far from the data: any leak moves the statistics visibly.
    padded = np.concatenate([real, np.full((28, 4, 4, 3), 1e3, np.float32)])
    mask = np.arange(128) < 100
    layer = nn.BatchNorm(convention=convention)
    params, state = batch_norm_state(layer, (4, 4, 3))
    alone, alone_state = layer.apply(params, real, state=state, train=True)
    masked, masked_state = layer.apply(params, padded, state=state, train=True, mask=mask)
    np.testing.assert_allclose(masked[:100], alone, rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(masked_state[name], alone_state[name], rtol=1e-6)
    # And the statistics are those of the real rows: normalized outputs have mean 0, var 1.
    np.testing.assert_allclose(np.asarray(alone).mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(alone).var(axis=(0, 1, 2)), 1.0, atol=2e-3)


def test_running_updates_follow_each_frameworks_momentum_and_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(6, 2, 2, 3)).astype(np.float32)
    n = 6 * 2 * 2
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
    biased = x.var(axis=(0, 1, 2), dtype=np.float64)
    keras = nn.BatchNorm()
    assert keras.config["momentum"] == 0.99 and keras.config["epsilon"] == 1e-3
    _, state = keras.apply(*batch_norm_state(keras, (2, 2, 3))[:1], x, train=True,
                           state=batch_norm_state(keras, (2, 2, 3))[1])
    np.testing.assert_allclose(state["mean"], 0.01 * mean, rtol=1e-5)
    np.testing.assert_allclose(state["var"], 0.99 + 0.01 * biased, rtol=1e-6)
    torch = nn.BatchNorm(convention="torch")
    assert torch.config["momentum"] == 0.1 and torch.config["epsilon"] == 1e-5
    params, fresh = batch_norm_state(torch, (2, 2, 3))
    y, state = torch.apply(params, x, state=fresh, train=True)
    np.testing.assert_allclose(state["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(state["var"], 0.9 + 0.1 * biased * n / (n - 1), rtol=1e-6)
    # Normalization uses the biased variance in both conventions.
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(biased + 1e-5), rtol=1e-4, atol=1e-5)
    assert state["mean"].dtype == state["var"].dtype == jnp.float32


def test_inference_uses_the_running_statistics_and_leaves_them_alone():
    layer = nn.BatchNorm(epsilon=0.5)
    params, _ = batch_norm_state(layer, (3,))
    params = {"gamma": jnp.array([1.0, 2.0, 3.0]), "beta": jnp.array([0.0, 1.0, -1.0])}
    state = {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([3.5, 1.5, 0.5])}
    x = jnp.array([[2.0, 2.0, 4.0]])
    y, new_state = layer.apply(params, x, state=state, train=False)
    np.testing.assert_allclose(y, [[0.5, 1.0, 2.0]], rtol=1e-6)
    assert new_state is state


def test_momentum_and_convention_are_checked():
    with pytest.raises(ValueError, match="convention"):
        nn.BatchNorm(convention="flax")
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm(momentum=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        nn.BatchNorm(epsilon=0.0)


def bn_convnet():
    return nn.serial(nn.Normalize(0.0, 255.0), nn.Conv2D(8, 3), nn.BatchNorm(momentum=0.9),
                     nn.ReLU(), nn.MaxPool2D(2), nn.Flatten(), nn.Dense(10, activation="softmax"))


def test_fit_with_a_partial_last_batch_keeps_padding_out_of_the_running_statistics():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=10)
    model = nn.serial(nn.BatchNorm(convention="torch"), nn.Dense(2, activation="softmax"))
    # Learning rate 0: the running statistics are those of the three batches in order.
    state, _ = fl.fit(model, x, y, loss="sparse_categorical_crossentropy",
                      optimizer=optax.sgd(0.0), epochs=1, batch_size=4, shuffle=False, verbose=0)
    mean, var = np.zeros(3), np.ones(3)
    for batch in (x[0:4], x[4:8], x[8:10]):
        mean = 0.9 * mean + 0.1 * batch.mean(axis=0)
        var = 0.9 * var + 0.1 * batch.var(axis=0, ddof=1)
    got = state.model_state["batch_norm_0"]
    np.testing.assert_allclose(got["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(got["var"], var, rtol=1e-5)


@pytest.fixture(scope="module")
def trained_bn_convnet():
    (x, y), (x_test, y_test) = fl.load_mnist(source="sample")
    x, x_test = x[:1000, ..., None], x_test[:500, ..., None]
    model = bn_convnet()
    state, _ = fl.fit(model, x, y[:1000], loss="sparse_categorical_crossentropy",
                      optimizer=fl.optim.keras_adam(), metrics=["accuracy"], epochs=3,
                      batch_size=32, verbose=0)
    return model, state, x_test, y_test[:500]


def test_fit_and_evaluate_a_batchnorm_convnet_with_its_model_state(trained_bn_convnet):
    model, state, x_test, y_test = trained_bn_convnet
    running = state.model_state["batch_norm_0"]
    assert float(jnp.abs(running["mean"]).max()) > 0  # moved from its zero start
    results = fl.evaluate(model, state.params, x_test, y_test,
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                          model_state=state.model_state)
    assert results["accuracy"] > 0.8
    # The running statistics have caught up: inference scores as well as batch statistics do.
    out, _ = nn.apply(model, state.params, x_test, state=state.model_state, train=True)
    batch_stats_accuracy = float(np.mean(np.argmax(out, axis=-1) == y_test))
    assert abs(results["accuracy"] - batch_stats_accuracy) < 0.03
    with pytest.raises(ValueError, match="pass model_state=state.model_state"):
        fl.evaluate(model, state.params, x_test, y_test, loss="sparse_categorical_crossentropy")


def test_checkpoint_and_export_keep_batchnorm_behaviour(trained_bn_convnet, tmp_path):
    model, state, x_test, _ = trained_bn_convnet
    want = fl.predict(model, state.params, x_test, model_state=state.model_state)
    fl.save_checkpoint(tmp_path / "ckpt", state)
    template = fl.init_state(model, fl.optim.keras_adam(), (28, 28, 1), seed=5)
    restored, _, _ = fl.restore_checkpoint(tmp_path / "ckpt", template)
    got = fl.predict(model, restored.params, x_test, model_state=restored.model_state)
    np.testing.assert_array_equal(got, want)
    path = fl.export_model(model, state.params, (28, 28, 1), np.uint8, tmp_path / "model.jax",
                           model_state=state.model_state, platforms=("cpu",))
    exported = fl.load_exported(path)(x_test)
    np.testing.assert_allclose(exported, want, rtol=1e-5, atol=1e-6)
    # With fresh statistics the outputs differ: the running ones are what is being kept.
    fresh = fl.predict(model, state.params, x_test, model_state=template.model_state)
    assert np.abs(fresh - want).max() > 1e-3

"""What a Keras or PyTorch user trips over: each mistake is named, or warned about, early.

docs/errors.md lists the messages; each row names its test.
"""

from __future__ import annotations

import functools
import warnings

import jax
import numpy as np
import pytest

import fnlearn as fl
from fnlearn import nn

SCE = "sparse_categorical_crossentropy"
RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int32)


def classifier(last: str | None = "softmax") -> nn.Layer:
    return nn.serial(nn.Dense(8, "relu"), nn.Dense(2, last))


def fit(model=None, x=X, y=Y, **kwargs):
    options = dict(loss=SCE, optimizer=fl.optim.keras_adam(), batch_size=16, verbose=0)
    return fl.fit(model or classifier(), x, y, **{**options, **kwargs})


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(p, q) for p, q in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# Silent no-ops: epochs is a total.

def test_resuming_past_epochs_warns_and_says_how_many_to_pass(tmp_path):
    fit(epochs=3, callbacks=[fl.ModelCheckpoint(tmp_path, verbose=0)])
    with pytest.warns(UserWarning, match=r"the run is already at epoch 3 and epochs=2 is the epoch "
                                         r"to stop at .* pass epochs=5 to train 2 more"):
        state, history = fit(epochs=2, resume=True,
                             callbacks=[fl.ModelCheckpoint(tmp_path, verbose=0)])
    assert int(state.epoch) == 3 and history.epoch == [0, 1, 2]


def test_continuing_a_state_past_epochs_warns():
    state, _ = fit(epochs=3)
    with pytest.warns(UserWarning, match="already at epoch 3 .* pass epochs=5 to train 2 more"):
        again, history = fit(epochs=2, state=state)
    assert history.epoch == [] and int(again.epoch) == 3 and leaves_equal(again, state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        more, history = fit(epochs=5, state=state)
    assert history.epoch == [3, 4] and int(more.epoch) == 5


# Silent failures: probabilities expected, logits or raw pixels given.

def test_linear_last_layer_with_a_probability_loss_warns():
    with pytest.warns(UserWarning, match=r"the loss expects probabilities, but the model's outputs "
                                         r"for the first batch range over \[.*from_logits=True"):
        fit(classifier(last=None))


def test_raw_uint8_pixels_without_normalize_warn():
    (x, y), _ = fl.load_mnist(source="sample")
    x, y = x[:256], y[:256]
    article = nn.serial(nn.Flatten(), nn.Dense(128, "relu"), nn.Dropout(0.2),
                        nn.Dense(10, "softmax"))
    with pytest.warns(UserWarning, match=r"(\d+) of the first 32 examples already get probability "
                                         r">= 0.999 for one class before training, and the inputs "
                                         r"range over \[0, 255\]: scale them first, e.g. "
                                         r"fnlearn.nn.Normalize\(0, 255\)") as record:
        fit(article, x, y, epochs=1)
    assert len(record) == 1
    # The same model without its softmax gets the logits warning.
    logits = nn.serial(nn.Flatten(), nn.Dense(128, "relu"), nn.Dense(10))
    with pytest.warns(UserWarning, match="the loss expects probabilities"):
        fit(logits, x, y, epochs=1)
    normalized = nn.serial(nn.Normalize(0, 255), *article.children)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(normalized, x, y, epochs=1)


def test_softmax_model_or_logits_loss_get_no_warning():
    from_logits = functools.partial(fl.losses.sparse_categorical_crossentropy, from_logits=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(classifier())
        fit(classifier(last=None), loss=from_logits)


def test_a_softmax_output_with_nll_loss_warns_naming_log_softmax():
    # Before: trained silently to a negative loss (-p[label] is minimized by p = 1 too).
    with pytest.warns(UserWarning, match=r"nll_loss expects log-probabilities, but the model's "
                                         r"outputs for the first batch are probabilities .*: "
                                         r"end the model with fnlearn.nn.LogSoftmax\(\) "
                                         r"\(torch.nn.LogSoftmax\) instead of a softmax"):
        fit(classifier(), loss="nll_loss")
    log_softmax = nn.serial(nn.Dense(8, "relu"), nn.Dense(2), nn.LogSoftmax())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, history = fit(log_softmax, loss="nll_loss", epochs=2)
    assert 0 < history.history["loss"][-1] < history.history["loss"][0]


def test_a_linear_output_with_binary_crossentropy_warns():
    binary_y = Y.astype(np.float32)[:, None]
    linear = nn.serial(nn.Dense(8, "relu"), nn.Dense(1))
    with pytest.warns(UserWarning, match=r"binary_crossentropy expects probabilities, but the "
                                         r"model's outputs for the first batch range over .*: "
                                         r"end the model with a sigmoid"):
        fit(linear, y=binary_y, loss="binary_crossentropy")
    from_logits = functools.partial(fl.losses.binary_crossentropy, from_logits=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(linear, y=binary_y, loss=from_logits)
        fit(nn.serial(nn.Dense(8, "relu"), nn.Dense(1, "sigmoid")), y=binary_y,
            loss="binary_crossentropy")


def test_a_trained_state_gets_no_unscaled_input_warning():
    (x, y), _ = fl.load_mnist(source="sample")
    x, y = x[:256], y[:256]
    model = nn.serial(nn.Normalize(0, 255), nn.Flatten(), nn.Dense(32, "relu"),
                      nn.Dense(10, "softmax"))
    state, _ = fit(model, x, y, epochs=3)
    # Confident outputs of a trained model on 0..255 inputs are no sign of unscaled inputs.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(model, x, y, epochs=4, state=state)


def test_float64_inputs_train_as_float32():
    assert jax.numpy.asarray(X.astype(np.float64)).dtype == np.float32
    as_float64, _ = fit(x=X.astype(np.float64), epochs=2)
    as_float32, _ = fit(x=X, epochs=2)
    assert leaves_equal(as_float64.params, as_float32.params)
    outputs = fl.predict(classifier(), as_float32.params, X.astype(np.float64))
    assert outputs.dtype == np.float32


# Errors that name the argument.

def test_keras_optimizer_names_are_keras_defaults_bit_for_bit():
    by_name, _ = fit(optimizer="adam", epochs=2)
    by_preset, _ = fit(optimizer=fl.optim.keras_adam(), epochs=2)
    assert leaves_equal(by_name, by_preset)
    for name, preset in (("sgd", fl.optim.keras_sgd), ("RMSprop", fl.optim.keras_rmsprop)):
        assert leaves_equal(fl.init_state(classifier(), name, (4,)),
                            fl.init_state(classifier(), preset(), (4,)))


@pytest.mark.parametrize("optimizer, error, message", [
    ("adamw", ValueError, r"unknown optimizer 'adamw'; known names: \['adam', 'rmsprop', 'sgd'\], "
                          "or pass an Optax GradientTransformation"),
    (0.001, TypeError, r"optimizer must be an Optax GradientTransformation \(e.g. "
                       r"fnlearn.optim.keras_adam\(\)\) or a name \['adam', 'rmsprop', 'sgd'\], "
                       "got float"),
])
def test_unknown_optimizers_are_refused_naming_the_argument(optimizer, error, message):
    with pytest.raises(error, match=message):
        fit(optimizer=optimizer)
    with pytest.raises(error, match=message):
        fl.init_state(classifier(), optimizer, (4,))


def test_a_float_seed_is_refused():
    with pytest.raises(TypeError, match=r"seed must be an int, got float 0.5"):
        fit(seed=0.5)
    with pytest.raises(TypeError, match=r"seed must be an int, got float 1.0"):
        fl.init_state(classifier(), "adam", (4,), seed=1.0)


def test_a_train_state_where_params_are_expected_is_named(tmp_path):
    model = classifier()
    state, _ = fit(model, epochs=1)
    message = r"params got a TrainState; pass state.params \(and model_state=state.model_state"
    with pytest.raises(TypeError, match=message):
        fl.predict(model, state, X)
    with pytest.raises(TypeError, match=message):
        fl.evaluate(model, state, X, Y, loss=SCE)
    with pytest.raises(TypeError, match=message):
        fl.export_model(model, state, (4,), np.float32, tmp_path / "model.fnx")
    with pytest.raises(TypeError, match=r"initial_params got a TrainState"):
        fit(model, initial_params=state)
    assert fl.predict(model, state.params, X).shape == (64, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_one_hot_labels_with_the_sparse_loss_are_named(dtype):
    one_hot = np.eye(2, dtype=dtype)[Y]
    with pytest.raises(ValueError, match=r"labels of shape \(64, 2\) look one-hot: use "
                                         r"loss='categorical_crossentropy', or pass "
                                         r"y.argmax\(-1\)"):
        fit(y=one_hot)
    state, _ = fit(y=one_hot, loss="categorical_crossentropy", epochs=1)
    assert int(state.epoch) == 1


def test_float_class_ids_point_to_the_categorical_loss():
    with pytest.raises(ValueError, match=r"needs integer class labels, got dtype float32; "
                                         r"cast with labels.astype\(int\) .* use "
                                         r"loss='categorical_crossentropy' "
                                         r"\(fnlearn.losses.categorical_crossentropy\)"):
        fit(y=Y.astype(np.float32))


def test_a_model_missing_its_flatten_is_told_to_add_one():
    images = RNG.normal(size=(64, 4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"the model's outputs have per-example shape \(4, 2\), "
                                         r"extra axes for labels of shape \(64,\): add "
                                         r"fnlearn.nn.Flatten\(\) before the last Dense layer"):
        fit(x=images)
    state, _ = fit(nn.serial(nn.Flatten(), *classifier().children), x=images, epochs=1)
    assert int(state.epoch) == 1


# Names and conveniences.

def test_linear_is_torch_nn_linear():
    layer = nn.Linear(784, 128)
    shape, params = layer.init(0, (784,))
    assert shape == (128,) and params["kernel"].shape == (784, 128)
    bound = 1 / np.sqrt(784)
    assert -bound <= float(params["kernel"].min()) and float(params["kernel"].max()) <= bound
    assert float(np.abs(params["kernel"]).max()) > 0.95 * bound
    assert -bound <= float(params["bias"].min()) and float(np.abs(params["bias"]).max()) > 0
    _, no_bias = nn.Linear(784, 128, bias=False).init(0, (784,))
    assert set(no_bias) == {"kernel"}
    x = np.ones((2, 784), np.float32)
    np.testing.assert_allclose(nn.Linear(784, 128).apply(params, x),
                               x @ params["kernel"] + params["bias"], rtol=1e-6)
    with pytest.raises(ValueError, match=r"Linear\(784, 128\) got inputs with 100 features "
                                         r"\(per-example shape \(100,\)\)"):
        layer.init(0, (100,))
    with pytest.raises(ValueError, match="Linear out_features must be a positive int, got 0"):
        nn.Linear(784, 0)


def test_a_non_string_activation_is_named():
    with pytest.raises(TypeError, match=r"activation must be a name \(one of .*\) or None, got "
                                        "the function relu; pass its name, e.g. activation='relu'"):
        nn.Dense(10, jax.nn.relu)
    with pytest.raises(ValueError, match="unknown activation 'gelu_exact'"):
        nn.Dense(10, "gelu_exact")
    with pytest.raises(TypeError, match=r"activation must be a name .* got int 3;"):
        nn.Dense(10, 3)


def test_model_init_takes_an_int_seed_or_a_key():
    model = classifier()
    by_seed = model.init(3, (4,))
    by_key = model.init(jax.random.key(3), (4,))
    by_raw_key = model.init(jax.random.key_data(jax.random.key(3)), (4,))
    assert by_seed[0] == (2,)
    assert leaves_equal(by_seed[1], by_key[1]) and leaves_equal(by_seed[1], by_raw_key[1])
    assert leaves_equal(by_seed[1], nn.init(model, 3, (4,)))
    init, _ = model
    assert leaves_equal(init(3, (4,))[1], by_seed[1])
    with pytest.raises(TypeError, match="key must be a jax.random key or an int seed, got float"):
        model.init(0.5, (4,))
    # A static argument of jit: the same architecture built again is equal (one compilation),
    # another is not.
    assert model == classifier() and hash(model) == hash(classifier())
    assert model != classifier(last=None) and model != nn.serial(*classifier().children[:1])


# A Keras or PyTorch habit meets fnlearn's conventions.

def batch_norm_convnet() -> nn.Layer:
    return nn.serial(nn.Normalize(0, 255), nn.Conv2D(4, (3, 3)), nn.BatchNorm(), nn.ReLU(),
                     nn.Flatten(), nn.Dense(10, "softmax"))


IMAGES = RNG.integers(0, 256, (32, 8, 8, 1)).astype(np.uint8)
DIGITS = np.arange(32) % 10


def test_forgetting_model_state_names_it(tmp_path):
    model = batch_norm_convnet()
    state, _ = fit(model, IMAGES, DIGITS, epochs=1)
    # Before: "model cannot be applied to inputs of per-example shape (8, 8, 1) ...: 'mean'".
    message = (r"the model has non-trainable state \(BatchNorm statistics\) but model_state is "
               r"empty: pass model_state=state.model_state")
    with pytest.raises(ValueError, match=message):
        fl.predict(model, state.params, IMAGES)
    with pytest.raises(ValueError, match=message):
        fl.evaluate(model, state.params, IMAGES, DIGITS, loss=SCE)
    with pytest.raises(ValueError, match="cannot export the model: " + message):
        fl.export_model(model, state.params, (8, 8, 1), np.uint8, tmp_path / "m.fnx")
    with pytest.raises(ValueError, match="cannot export the model: " + message):
        fl.export_saved_model(model, state.params, (8, 8, 1), np.uint8, tmp_path / "saved")
    assert fl.predict(model, state.params, IMAGES, model_state=state.model_state).shape == (32, 10)


def test_channels_first_images_are_told_to_transpose():
    model = batch_norm_convnet()
    nchw = IMAGES.transpose(0, 3, 1, 2)
    # Before: "Conv2D window (3, 3) ... does not fit the input (1, 8)" when training, and
    # "kernel input channels 1 ... do not match x channels 8" with trained parameters.
    hint = (r"the model takes \(8, 8, 1\), the same images channels last: fnlearn takes NHWC "
            r"\(channels last\); use x.transpose\(0, 2, 3, 1\)")
    with pytest.raises(ValueError, match=r"model cannot be initialized for inputs of per-example "
                                         r"shape \(1, 8, 8\); " + hint):
        fit(model, nchw, DIGITS)
    state, _ = fit(model, IMAGES, DIGITS, epochs=1)
    with pytest.raises(ValueError, match=r"model cannot be applied to inputs of per-example "
                                         r"shape \(1, 8, 8\) \(dtype uint8\); " + hint):
        fl.predict(model, state.params, nchw, model_state=state.model_state)
    # A shape that is wrong in another way gets no such hint.
    with pytest.raises(ValueError, match=r"per-example shape \(8, 7, 1\)") as error:
        fl.predict(model, state.params, IMAGES[:, :, :7], model_state=state.model_state)
    assert "NHWC" not in str(error.value)


def test_a_flax_module_is_told_to_be_wrapped():
    import flax.linen as flax_linen

    class Mlp(flax_linen.Module):
        @flax_linen.compact
        def __call__(self, x):
            return flax_linen.Dense(2)(x)

    # Before: "'tuple' object has no attribute 'astype'".
    with pytest.raises(TypeError, match=r"model is a flax.linen Module \(Mlp\): wrap it with "
                                        r"fnlearn.nn.from_flax\(module, train_argument=...\)"):
        fit(Mlp())
    with pytest.raises(TypeError, match=r"model is a flax.linen Module"):
        fl.predict(Mlp(), {}, X)
    with pytest.raises(TypeError, match=r"model must be an fnlearn.nn Layer .*, got list"):
        fit([nn.Dense(2)])

"""Graph models: Keras's functional API, a PyTorch forward, stax's combinators, as one Layer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnlearn as fl
from fnlearn import nn

RNG = np.random.default_rng(0)


def conv(x, kernel, bias):
    out = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + bias


def test_a_residual_block_in_the_keras_functional_style():
    x = nn.Input((5, 5, 2))
    h = nn.Conv2D(2, 3, padding="same")(x)
    model = nn.Model(x, nn.Add()([h, x]))
    params = nn.init(model, 0, (5, 5, 2))
    assert list(params) == ["conv2d_0"]
    batch = jnp.asarray(RNG.normal(size=(3, 5, 5, 2)), jnp.float32)
    want = conv(batch, params["conv2d_0"]["kernel"], params["conv2d_0"]["bias"]) + batch
    np.testing.assert_allclose(model.apply(params, batch), want, rtol=1e-5, atol=1e-6)


def test_a_pytorch_style_forward_builds_the_same_model():
    conv1, conv2 = nn.Conv2D(2, 3, padding="same", activation="relu"), nn.Conv2D(2, 1)

    def forward(x):
        return nn.Add()([conv2(conv1(x)), x])

    by_forward = nn.Model(forward)
    x = nn.Input(name="x")
    by_nodes = nn.Model(x, nn.Add()([conv2(conv1(x)), x]))
    assert by_forward == by_nodes  # the same graph, so one compiled program for both
    assert nn.describe(by_forward, (4, 4, 2))[0].name == "x"  # the input takes the argument's name


def test_merges_add_multiply_average_subtract_and_concatenate():
    a, b = nn.Input(), nn.Input()
    model = nn.Model((a, b), {"add": nn.Add()([a, b]), "mul": nn.Multiply()([a, b]),
                              "avg": nn.Average()(a, b), "sub": nn.Subtract()([a, b]),
                              "max": nn.Maximum()([a, b]), "cat": nn.Concatenate()([a, b, a])})
    shapes, params = model.init(0, ((3,), (3,)))
    assert shapes["cat"] == (9,) and shapes["add"] == (3,) and params == {}
    xa, xb = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[4.0, -1.0, 0.5]])
    out = model.apply(params, (xa, xb))
    np.testing.assert_allclose(out["add"], xa + xb)
    np.testing.assert_allclose(out["mul"], xa * xb)
    np.testing.assert_allclose(out["avg"], (xa + xb) / 2)
    np.testing.assert_allclose(out["sub"], xa - xb)
    np.testing.assert_allclose(out["max"], jnp.maximum(xa, xb))
    np.testing.assert_allclose(out["cat"], jnp.concatenate([xa, xb, xa], -1))


def test_one_layer_called_twice_shares_its_weights_and_equal_layers_do_not():
    x = nn.Input((4,))
    shared = nn.Dense(4, "tanh")
    tied = nn.Model(x, shared(shared(x)))
    params = nn.init(tied, 0, (4,))
    assert list(params) == ["dense_0"]
    p = params["dense_0"]
    batch = jnp.ones((2, 4))
    once = jnp.tanh(batch @ p["kernel"] + p["bias"])
    np.testing.assert_allclose(tied.apply(params, batch),
                               jnp.tanh(once @ p["kernel"] + p["bias"]), rtol=1e-6)
    two = nn.Model(x, nn.Dense(4, "tanh")(nn.Dense(4, "tanh")(x)))
    assert list(nn.init(two, 0, (4,))) == ["dense_0", "dense_1"]
    assert two != tied
    rows = nn.describe(tied, (4,))
    assert [(r.name, r.params) for r in rows] == [("input_0", 0), ("dense_0", 20),
                                                  ("dense_0 (call 2)", 0)]


def test_nested_graphs_keep_their_parameters_under_their_name():
    block = nn.residual(nn.Dense(6, "relu"), nn.Dense(6), name="block")
    x = nn.Input((6,))
    model = nn.Model(x, nn.Dense(2)(block(nn.Dense(6)(x))))
    params = nn.init(model, 0, (6,))
    assert set(params) == {"dense_0", "block", "dense_1"}
    assert set(params["block"]) == {"dense_0", "dense_1"}
    # The same block in a serial computes the same thing from the same weights.
    chain = nn.serial(nn.Dense(6, name="dense_0"), block, nn.Dense(2, name="dense_1"))
    batch = jnp.asarray(RNG.normal(size=(3, 6)), jnp.float32)
    np.testing.assert_allclose(chain.apply(params, batch), model.apply(params, batch), rtol=1e-6)


def test_a_layers_initial_weights_depend_on_its_name_not_on_the_others():
    x = nn.Input((3,))
    small = nn.Model(x, nn.Dense(2, name="head")(x))
    bigger = nn.Model(x, nn.Dense(2, name="head")(nn.Dense(3, "relu", name="extra")(x)))
    np.testing.assert_array_equal(nn.init(small, 7, (3,))["head"]["kernel"],
                                  nn.init(bigger, 7, (3,))["head"]["kernel"])


def test_stax_style_combinators():
    inception = nn.fan_out(nn.Dense(2), nn.Dense(3), merge=nn.Concatenate())
    shape, params = inception.init(0, (4,))
    assert shape == (5,) and set(params) == {"dense_0", "dense_1"}
    pair = nn.parallel(nn.Dense(2), nn.Flatten())
    shapes, params = pair.init(0, ((4,), (2, 3)))
    assert shapes == ((2,), (6,))
    out = pair.apply(params, (jnp.ones((1, 4)), jnp.ones((1, 2, 3))))
    assert out[1].shape == (1, 6)
    heads = nn.fan_out(nn.Dense(2), nn.Dense(1))
    x = nn.Input((4,))
    first, second = heads(x)  # a model with tuple outputs unpacks into its outputs
    model = nn.Model(x, nn.Concatenate()([first, second]))
    assert model.init(0, (4,))[0] == (3,)


def two_in_two_out():
    image, extra = nn.Input((4, 4, 1), name="image"), nn.Input((3,), name="extra")
    h = nn.Flatten()(nn.Conv2D(4, 3, padding="same", activation="relu")(image))
    h = nn.Concatenate()([h, nn.Dense(8, "relu")(extra)])
    h = nn.Dropout(0.1)(h)
    return nn.Model({"image": image, "extra": extra},
                    {"digit": nn.Dense(3, "softmax", name="digit")(h),
                     "size": nn.Dense(1, name="size")(h)})


def two_in_two_out_data(n=120):
    image = RNG.normal(size=(n, 4, 4, 1)).astype(np.float32)
    extra = RNG.normal(size=(n, 3)).astype(np.float32)
    digit = (image.mean((1, 2, 3)) > 0).astype(np.int32) + (extra[:, 0] > 0)
    size = (extra[:, 1:2] - image[:, 0, 0]).astype(np.float32)
    return {"image": image, "extra": extra}, {"digit": digit, "size": size}


LOSS = {"digit": "sparse_categorical_crossentropy", "size": "mse"}


def test_two_inputs_and_two_outputs_through_fit_evaluate_and_predict():
    model = two_in_two_out()
    x, y = two_in_two_out_data()
    state, history = fl.fit(model, x, y, loss=LOSS, loss_weights={"digit": 1.0, "size": 0.5},
                            metrics={"digit": ["accuracy"]}, optimizer="adam", epochs=3,
                            batch_size=32, validation_split=0.25, verbose=0)
    logs = history.history
    assert list(logs) == ["loss", "digit_loss", "size_loss", "digit_accuracy", "val_loss",
                          "val_digit_loss", "val_size_loss", "val_digit_accuracy"]
    total = np.array(logs["digit_loss"]) + 0.5 * np.array(logs["size_loss"])
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-5)
    assert logs["loss"][-1] < logs["loss"][0]
    results = fl.evaluate(model, state.params, x, y, loss=LOSS, metrics={"digit": ["accuracy"]},
                          loss_weights={"digit": 1.0, "size": 0.5})
    assert set(results) == {"loss", "digit_loss", "size_loss", "digit_accuracy"}
    out = fl.predict(model, state.params, x, batch_size=50)
    assert set(out) == {"digit", "size"} and out["digit"].shape == (120, 3)
    direct, _ = nn.apply(model, state.params, jax.tree.map(jnp.asarray, x))
    np.testing.assert_allclose(out["size"], direct["size"], rtol=1e-5, atol=1e-6)
    # The mean loss over the data, from predict's outputs, is what evaluate reports.
    size_loss = np.mean((out["size"] - y["size"]) ** 2)
    assert results["size_loss"] == pytest.approx(size_loss, rel=1e-4)


def test_tuple_inputs_and_outputs_take_lists_of_losses():
    a, b = nn.Input((2,)), nn.Input((2,))
    model = nn.Model([a, b], (nn.Dense(1)(a), nn.Dense(1)(nn.Add()([a, b]))))
    xa, xb = RNG.normal(size=(64, 2)).astype(np.float32), RNG.normal(size=(64, 2)).astype(
        np.float32)
    y = (xa.sum(1, keepdims=True), (xa + xb).sum(1, keepdims=True))
    _, history = fl.fit(model, (xa, xb), y, loss=["mse", "mse"], optimizer=optax.adam(0.05),
                        epochs=30, batch_size=64, verbose=0)
    assert list(history.history) == ["loss", "0_loss", "1_loss"]
    assert history.history["loss"][-1] < 0.1 * history.history["loss"][0]


def test_a_loss_dict_must_name_each_output_and_only_those():
    model = two_in_two_out()
    x, y = two_in_two_out_data(32)
    with pytest.raises(ValueError, match=r"loss has no entry for the model's outputs \['size'\]"):
        fl.fit(model, x, y, loss={"digit": "sparse_categorical_crossentropy"}, optimizer="sgd",
               verbose=0)
    with pytest.raises(ValueError, match=r"loss names outputs \['sizes'\] the model does not "
                                         r"have; its outputs are \['digit', 'size'\]"):
        fl.fit(model, x, y, loss={**LOSS, "sizes": "mse"}, optimizer="sgd", verbose=0)
    with pytest.raises(ValueError, match=r"x must be a dict with the model's inputs "
                                         r"\['image', 'extra'\], got \['image'\]"):
        fl.predict(model, nn.init(model, 0, {"image": (4, 4, 1), "extra": (3,)}),
                   {"image": x["image"]})


def test_state_and_the_padding_mask_reach_every_stateful_layer_in_every_branch():
    x = nn.Input((3,))
    left = nn.BatchNorm(convention="torch", name="left")(x)
    right = nn.residual(nn.BatchNorm(convention="torch", name="inner"), name="block")(x)
    model = nn.Model(x, nn.Dense(2, "softmax")(nn.Concatenate()([left, right])))
    data = RNG.normal(size=(10, 3)).astype(np.float32)
    labels = RNG.integers(0, 2, size=10)
    # Learning rate 0, no shuffle: the running statistics are those of the three batches,
    # the last one (2 real rows of 4) without its padding.
    state, _ = fl.fit(model, data, labels, loss="sparse_categorical_crossentropy",
                      optimizer=optax.sgd(0.0), epochs=1, batch_size=4, shuffle=False, verbose=0)
    mean, var = np.zeros(3), np.ones(3)
    for batch in (data[0:4], data[4:8], data[8:10]):
        mean = 0.9 * mean + 0.1 * batch.mean(axis=0)
        var = 0.9 * var + 0.1 * batch.var(axis=0, ddof=1)
    for got in (state.model_state["left"], state.model_state["block"]["inner"]):
        np.testing.assert_allclose(got["mean"], mean, rtol=1e-5)
        np.testing.assert_allclose(got["var"], var, rtol=1e-5)


def test_dropout_draws_its_own_key_per_layer_and_per_call():
    x = nn.Input((1000,))
    shared = nn.Dropout(0.5)
    model = nn.Model(x, (nn.Dropout(0.5)(x), nn.Dropout(0.5)(x), shared(x), shared(x)))
    outs = model.apply({}, jnp.ones((1, 1000)), key=jax.random.key(0), train=True)
    masks = [np.asarray(o) == 0 for o in outs]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(masks[i], masks[j]), (i, j)
    assert all(np.array_equal(np.asarray(o), np.ones((1, 1000))) for o in model.apply(
        {}, jnp.ones((1, 1000))))


def test_shapes_that_do_not_merge_fail_at_init_naming_both_branches():
    x = nn.Input((28, 28, 1))
    wide = nn.Conv2D(32, 3, strides=2, padding="same", name="wide")(x)
    deep = nn.Conv2D(64, 3, strides=4, padding="same", name="deep")(x)
    model = nn.Model(x, nn.Add()([wide, deep]))
    with pytest.raises(ValueError, match=r"add_0 \(Add\) called on 'wide' \(14, 14, 32\) and "
                                         r"'deep' \(7, 7, 64\): Add needs inputs of one shape"):
        nn.init(model, 0, (28, 28, 1))
    with pytest.raises(ValueError, match=r"input 'input_0' is declared with per-example shape "
                                         r"\(28, 28, 1\) but the model is initialized for "
                                         r"\(32, 32, 3\)"):
        nn.init(model, 0, (32, 32, 3))


def test_unused_inputs_and_outputs_from_elsewhere_are_refused_by_name():
    a, b, stray = nn.Input(name="a"), nn.Input(name="b"), nn.Input(name="stray")
    with pytest.raises(ValueError, match=r"Model inputs\[1\] \('b'\) is not used by any output"):
        nn.Model([a, b], nn.Dense(2)(a))
    with pytest.raises(ValueError, match=r"Model outputs\['y'\] is computed from "
                                         r"Input\(shape=None, name='stray'\), which is not one "
                                         "of the model's inputs"):
        nn.Model(a, {"x": nn.Dense(2)(a), "y": nn.Add()([a, stray])})
    with pytest.raises(TypeError, match=r"Model inputs must be an nn.Input node"):
        nn.Model(nn.Dense(2)(a), nn.Dense(2)(a))
    with pytest.raises(ValueError, match=r"Model: two layers are named 'h'"):
        nn.Model(a, nn.Dense(2, name="h")(nn.Dense(2, name="h")(a)))


def test_a_cycle_cannot_be_built_and_arrays_are_not_nodes():
    x = nn.Input()
    node = nn.Dense(2)(x)
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.args = node  # a node points only at nodes made before it
    with pytest.raises(TypeError, match=r"calling a layer builds a graph from nn.Input nodes; "
                                        r"to run a layer on arrays use nn.apply"):
        nn.Dense(2)(jnp.ones((1, 3)))


def test_summary_lists_each_call_with_its_inputs_and_the_graph_draws(tmp_path):
    model = two_in_two_out()
    text = nn.summary(model, {"image": (4, 4, 1), "extra": (3,)})
    assert "Connected to" in text
    assert "concatenate_0 (Concatenate)  (None, 72)" in text
    assert "flatten_0, dense_0" in text
    total = nn.count_params(nn.init(model, 0, {"image": (4, 4, 1), "extra": (3,)}))
    assert f"Total params: {total:,}" in text
    graph = fl.graph.model_graph(model, {"image": (4, 4, 1), "extra": (3,)})
    assert [n.name for n in graph.of_kind("input")] == ["image", "extra"]
    assert [n.name for n in graph.of_kind("output")] == ["digit", "size"]
    assert graph.node("concatenate_0").inputs == ("flatten_0", "dense_0")
    path = fl.graph.render_model(model, {"image": (4, 4, 1), "extra": (3,)},
                                 tmp_path / "model.png", engine="matplotlib")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_graph_rebuilt_is_equal_and_compiles_nothing_new():
    assert two_in_two_out() == two_in_two_out()
    assert hash(two_in_two_out()) == hash(two_in_two_out())
    x, y = two_in_two_out_data(32)
    options = dict(loss=LOSS, optimizer=fl.optim.keras_adam(), batch_size=16, verbose=0)
    fl.fit(two_in_two_out(), x, y, **options)
    with fl.count_compilations() as compiled:
        fl.fit(two_in_two_out(), x, y, **options)
    assert sum(compiled.values()) == 0, compiled


def test_a_graph_model_checkpoints_exports_and_trains_on_a_mesh(tmp_path):
    x = nn.Input((6,))
    block = nn.residual(nn.Dense(6, "relu"), nn.BatchNorm(), nn.Dropout(0.2))
    model = nn.Model(x, nn.Dense(3, "softmax")(block(block(x))))
    data = RNG.normal(size=(64, 6)).astype(np.float32)
    labels = RNG.integers(0, 3, size=64)
    mesh = jax.make_mesh((1,), ("data",))
    state, _ = fl.fit(model, data, labels, loss="sparse_categorical_crossentropy",
                      optimizer="adam", epochs=2, batch_size=16, verbose=0, mesh=mesh)
    fl.save_checkpoint(tmp_path / "run", state)
    restored, _, _ = fl.restore_checkpoint(tmp_path / "run", state)
    assert jax.tree.all(jax.tree.map(np.array_equal, restored.params, state.params))
    path = fl.export_model(model, state.params, (6,), np.float32, tmp_path / "model.fnx",
                           model_state=state.model_state, platforms=("cpu",))
    exported = fl.load_exported(path)(data)
    np.testing.assert_allclose(exported, fl.predict(model, state.params, data,
                                                    model_state=state.model_state), rtol=1e-6)


def test_graph_models_are_refused_where_only_chains_convert():
    x = nn.Input((3,))
    model = nn.Model(x, nn.Add()([nn.Dense(3)(x), x]))
    with pytest.raises(ValueError, match="is a graph model: only chains .serial. have PyTorch"):
        fl.parity.registry.entry(model, 0, "PyTorch")  # what to_torch_module asks, per layer
    with pytest.raises(TypeError, match="is a layer, already usable wherever a model is"):
        nn.Model(nn.Dense(3))

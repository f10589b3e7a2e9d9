"""Whole-model save and load: the architecture as JSON, the training state, the optimizer.

Every built-in layer comes back equal and computing the same bits; graph models keep
their shared layers and outputs; a model reloaded in a fresh process with no model code
continues training exactly as an uninterrupted run; what cannot be rebuilt is refused,
named.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import fnlearn as fl
from fnlearn import architecture, nn
from fnlearn.checkpoint import CheckpointError
from fnlearn.checks import resolve_optimizer

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
IMAGE, VECTOR, SEQUENCE = (6, 6, 3), (4,), (10, 3)

# One typical call of every constructor in fnlearn.nn: (arguments, keywords, input shape).
TYPICAL = {
    "Activation": (("tanh",), {}, VECTOR),
    "Bidirectional": ((nn.GRU(3, return_sequences=True),), {"merge_mode": "sum"}, SEQUENCE),
    "ClassToken": ((), {}, SEQUENCE),
    "GRU": ((4,), {"reset_after": False, "go_backwards": True}, SEQUENCE),
    "GlobalAveragePooling1D": ((), {}, SEQUENCE),
    "LSTM": ((4,), {"return_sequences": True, "convention": "torch"}, SEQUENCE),
    "MultiHeadAttention": ((2, 4), {"causal": True, "output_dim": 5}, SEQUENCE),
    "PositionEmbedding": ((12,), {"stddev": 0.1}, SEQUENCE),
    "SimpleRNN": ((4, "relu"), {"mask_value": 0.0}, SEQUENCE),
    "SinusoidalPositionEmbedding": ((100.0,), {}, SEQUENCE),
    "TakeStep": ((-2,), {}, SEQUENCE),
    "TransformerEncoderLayer": ((3, 1, 8), {"dropout": 0.0, "norm_first": True}, SEQUENCE),
    "AdaptiveAvgPool2D": ((2,), {}, IMAGE),
    "AvgPool2D": ((2,), {"padding": "same"}, IMAGE),
    "BatchNorm": ((0.9,), {"convention": "torch", "name": "bn"}, IMAGE),
    "Conv1D": ((4, 3), {"padding": "same", "dilation": 2, "activation": "relu"}, SEQUENCE),
    "Conv2D": ((4, (3, 3)), {"padding": ((1, 1), (0, 2)), "init": "torch"}, IMAGE),
    "Conv2DTranspose": ((2, 3), {"strides": 2, "padding": "same"}, IMAGE),
    "Dense": ((5, "relu"), {"use_bias": False, "name": "hidden"}, VECTOR),
    "DepthwiseConv2D": ((3,), {"depth_multiplier": 2, "padding": "same"}, IMAGE),
    "Dropout": ((0.3,), {}, VECTOR),
    "ELU": ((0.5,), {}, VECTOR),
    "Embedding": ((10, 4), {"padding_idx": 0}, (5,)),
    "Flatten": ((True,), {}, IMAGE),
    "GELU": ((True,), {}, VECTOR),
    "GlobalAveragePooling2D": ((), {}, IMAGE),
    "GroupNorm": ((3,), {"scale": False}, IMAGE),
    "HardSigmoid": ((), {}, VECTOR),
    "LayerNorm": (((-2, -1),), {"epsilon": 1e-5}, IMAGE),
    "LeakyReLU": ((0.1,), {}, VECTOR),
    "Linear": ((4, 3), {"bias": False}, VECTOR),
    "LogSoftmax": ((), {}, VECTOR),
    "MaxPool2D": (((2, 2),), {"strides": 1}, IMAGE),
    "Normalize": ((np.float32(127.5), 255.0), {}, VECTOR),
    "RandomCrop": ((2,), {}, IMAGE),
    "RandomFlip": (("horizontal",), {}, IMAGE),
    "ReLU": ((), {}, VECTOR),
    "ReLU6": ((), {}, VECTOR),
    "Reshape": (((2, 2),), {}, VECTOR),
    "SiLU": ((), {}, VECTOR),
    "Sigmoid": ((), {}, VECTOR),
    "Softmax": ((), {}, VECTOR),
    "SpatialDropout2D": ((0.2,), {}, IMAGE),
    "Tanh": ((), {}, VECTOR),
    "UpSampling2D": (((2, 3), "bilinear"), {}, IMAGE),
    "ZeroPadding2D": ((((1, 2), (0, 1)),), {}, IMAGE),
    "serial": ((nn.Dense(3), nn.ReLU()), {"name": "block"}, VECTOR),
    "Sequential": ((nn.Dense(3), nn.Dropout(0.5)), {}, VECTOR),
}
MERGES = ("Add", "Average", "Concatenate", "Maximum", "Minimum", "Multiply", "Subtract")
REFUSED = ("from_flax",)  # a Flax module is no JSON value: test_flax_modules_are_refused...


def _outputs_equal(a, b) -> bool:
    return all(np.array_equal(p, q) for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                      strict=True))


def _round_trip(model, custom_layers=None):
    return architecture.model_from_json(architecture.model_to_json(model), custom_layers)


def _same_function(model, rebuilt, input_shape, x) -> bool:
    _, params, state = nn.init_with_state(model, 0, input_shape)
    key = jax.random.key(1)
    ours = nn.apply(model, params, x, state=state, key=key, train=True)
    theirs = nn.apply(rebuilt, params, x, state=state, key=key, train=True)
    return _outputs_equal(ours, theirs)


def test_the_table_covers_every_constructor_in_fnlearn_nn():
    constructors = {name for name in nn.__all__ if hasattr(getattr(nn, name), "constructs")}
    assert constructors == set(TYPICAL) | set(MERGES) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(TYPICAL))
def test_every_built_in_layer_round_trips(name):
    args, kwargs, shape = TYPICAL[name]
    layer = getattr(nn, name)(*args, **kwargs)
    rebuilt = _round_trip(layer)
    assert rebuilt == layer and rebuilt is not layer
    assert rebuilt.name == layer.name and rebuilt.stateful == layer.stateful
    dtype = np.int32 if name == "Embedding" else np.float32
    x = (np.arange(2 * np.prod(shape)) % 7).reshape(2, *shape).astype(dtype)
    assert _same_function(layer, rebuilt, shape, x)


@pytest.mark.parametrize("name", MERGES)
def test_every_merge_layer_round_trips_in_a_graph(name):
    a, b = nn.Input(VECTOR, name="a"), nn.Input(VECTOR, name="b")
    model = nn.Model([a, b], getattr(nn, name)()([a, b]))
    rebuilt = _round_trip(model)
    assert rebuilt == model
    x = (np.ones((2, 4), np.float32), np.arange(8, dtype=np.float32).reshape(2, 4))
    assert _same_function(model, rebuilt, (VECTOR, VECTOR), x)


def test_a_changed_argument_makes_another_layer():
    # What the round-trip tests rest on: equality sees the arguments and their types.
    assert nn.Dense(5, "relu") != nn.Dense(5, "tanh")
    assert nn.MaxPool2D((2, 2)) != nn.MaxPool2D([2, 2])


def _shared_graph():
    x = nn.Input((8,), name="pixels")
    shared = nn.Dense(8, "relu", name="shared")
    h = shared(x)
    h2 = shared(h)  # the same weights, called twice
    trunk = nn.residual(nn.Dense(8), nn.ReLU(), name="block")(h2)
    heads = nn.fan_out(nn.Dense(3), nn.Dense(2))(trunk)
    pair = nn.parallel(nn.ReLU(), nn.Tanh())((heads[0], heads[1]))
    normed = nn.BatchNorm()(nn.Concatenate()([pair[0], pair[1]]))
    return nn.Model(x, {"logits": nn.Dense(4)(normed), "aux": heads[1], "echo": h})


def test_a_graph_with_shared_layers_and_several_outputs_round_trips(tmp_path):
    model = _shared_graph()
    _, params, model_state = nn.init_with_state(model, 0, (8,))
    state = fl.TrainState.create(params, (), model_state)._replace(key=jax.random.key(3))
    fl.save_model(tmp_path / "graph", model, state)  # a typed key is saved as its data
    loaded, restored = fl.load_model(tmp_path / "graph", optimizer=optax.identity())
    assert loaded == model
    spec = loaded.config["graph"]
    assert spec.names.count("shared") == 1
    assert [s.label for s in spec.steps if s.op == "call"][:2] == ["shared", "shared (call 2)"]
    assert set(restored.params) == set(params) and "shared" in restored.params
    assert _outputs_equal(restored.params, params)
    assert np.array_equal(restored.key, jax.random.key_data(state.key))
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(3, 8)
    ours, _ = nn.apply(model, params, x, state=model_state)
    theirs, _ = nn.apply(loaded, restored.params, x, state=restored.model_state)
    assert set(theirs) == {"logits", "aux", "echo"} and _outputs_equal(ours, theirs)


def test_a_forward_function_model_with_dict_inputs_round_trips():
    def forward(image, extra):
        return nn.Dense(2)(nn.Concatenate()([nn.Flatten()(image), extra]))

    by_forward = nn.Model(forward)
    image, extra = nn.Input((2, 2), name="image"), nn.Input((3,))
    by_dict = nn.Model({"image": image, "extra": extra},
                       nn.Dense(2)(nn.Concatenate()([nn.Flatten()(image), extra])))
    for model in (by_forward, by_dict):
        assert _round_trip(model) == model
    shapes = {"image": (2, 2), "extra": (3,)}
    x = {"image": np.ones((2, 2, 2), np.float32), "extra": np.ones((2, 3), np.float32)}
    assert _same_function(by_dict, _round_trip(by_dict), shapes, x)


def _batch_norm_data(n=100):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int32) + (x[:, 0, 0, 0] > 1).astype(np.int32)
    return x, y


def _batch_norm_model():
    x = nn.Input((6, 6, 1))
    h = nn.ReLU()(nn.BatchNorm()(nn.Conv2D(4, 3, padding="same")(x)))
    h = nn.residual(nn.Conv2D(4, 3, padding="same"), nn.ReLU())(h)
    h = nn.Dropout(0.25)(nn.Flatten()(nn.MaxPool2D(2)(h)))
    return nn.Model(x, nn.Dense(3, "softmax")(h))


def _fit(model, x, y, epochs, state=None, optimizer=None):
    return fl.fit(model, x, y, loss="sparse_categorical_crossentropy",
                  optimizer=optimizer or fl.optim.keras_adam(3e-3), batch_size=32,
                  epochs=epochs, state=state, verbose=0)


def test_a_batch_norm_models_state_round_trips(tmp_path):
    x, y = _batch_norm_data()
    model = _batch_norm_model()
    state, _ = _fit(model, x, y, epochs=1)
    fl.save_model(tmp_path / "bn", model, state, ("keras_adam", {"learning_rate": 3e-3}))
    loaded, restored = fl.load_model(tmp_path / "bn")
    assert restored.model_state and int(restored.step) == 4 and int(restored.epoch) == 1
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert _outputs_equal(restored, state)
    assert np.array_equal(fl.predict(model, state.params, x, model_state=state.model_state),
                          fl.predict(loaded, restored.params, x,
                                     model_state=restored.model_state))


def test_reloaded_in_a_fresh_process_it_continues_training_bit_identically(tmp_path):
    x, y = _batch_norm_data()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    model = _batch_norm_model()
    straight, history = _fit(model, x, y, epochs=3)
    two, _ = _fit(model, x, y, epochs=2)
    fl.save_model(tmp_path / "saved", model, two, ("keras_adam", {"learning_rate": 3e-3}))
    subprocess.run([sys.executable, str(TESTS / "load_model_worker.py"), str(tmp_path / "saved"),
                    str(tmp_path / "data.npz"), "3", str(tmp_path / "out.npz")],
                   check=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        resumed = [out[f"leaf_{i}"] for i in range(len(jax.tree.leaves(straight)))]
        assert out["loss"] == history.history["loss"][-1]
    assert int(resumed[-3]) == int(straight.step) == 12  # step, epoch, key come last
    for ours, theirs in zip(jax.tree.leaves(straight), resumed, strict=True):
        assert np.array_equal(np.asarray(ours), theirs)


@nn.constructor
def Scale(factor: float) -> nn.Layer:
    """A layer of the user's own: ``x * factor``."""
    return nn.Layer(lambda key, shape: (shape, {}),
                    lambda params, x, *, key=None, train=False: x * factor, "scale")


def _state(model, shape, optimizer="sgd"):
    return fl.init_state(model, optimizer, shape)


def test_a_custom_layer_is_rebuilt_from_the_constructor_passed_in(tmp_path):
    model = nn.serial(nn.Dense(3), Scale(2.0), Scale(0.5, name="half"))
    fl.save_model(tmp_path / "m", model, _state(model, (4,)), "sgd")
    with pytest.raises(fl.SavingError, match=r"cannot rebuild layers whose constructors are not "
                       r"fnlearn.nn's: model/scale_0 \(scale, built by .*Scale\); model/half "
                       r".*custom_layers=\[Scale\]"):
        fl.load_model(tmp_path / "m")
    for custom in ([Scale], {"Scale": Scale}):
        loaded, _ = fl.load_model(tmp_path / "m", custom_layers=custom)
        assert loaded == model


def test_a_custom_constructor_of_another_layer_is_refused(tmp_path):
    model = nn.serial(Scale(2.0))
    fl.save_model(tmp_path / "m", model, _state(model, (4,)), "sgd")

    @nn.constructor
    def Other(factor):  # the right argument, another layer
        return nn.ReLU()

    with pytest.raises(fl.SavingError, match=r"model/scale_0 \(scale\): its constructor built "
                       r"a 'relu', the saved layer is a 'scale'"):
        fl.load_model(tmp_path / "m", custom_layers={"Scale": Other})
    with pytest.raises(fl.SavingError, match=r"cannot rebuild model/scale_0 \(scale\): .*Scale "
                       r"takes no argument \['factor'\] \(saved by another version of it\?\)"):
        fl.load_model(tmp_path / "m", custom_layers={"Scale": nn.Dense})

    @nn.constructor
    def Strict(factor):
        raise ValueError(f"factor must be below 1, got {factor}")

    with pytest.raises(fl.SavingError, match=r"cannot rebuild model/scale_0 \(scale\) with .*"
                       r"Scale: factor must be below 1, got 2.0"):
        fl.load_model(tmp_path / "m", custom_layers={"Scale": Strict})


def test_layers_it_cannot_rebuild_are_refused_each_named():
    @nn.constructor
    def Apply(fn):
        return nn.Layer(lambda key, shape: (shape, {}),
                        lambda params, x, *, key=None, train=False: fn(x), "apply")

    mine = nn.Layer(lambda key, shape: (shape, {}),
                    lambda params, x, *, key=None, train=False: x, "mine")
    model = nn.serial(nn.Dense(2), mine, Apply(np.tanh), name="net")
    with pytest.raises(fl.SavingError) as caught:
        architecture.model_to_json(model)
    message = str(caught.value)
    assert "net/mine_0 (mine) was not built by an fnlearn.nn constructor" in message
    assert "@fnlearn.nn.constructor" in message
    assert ("net/apply_0 (apply): argument fn=<ufunc 'tanh'> cannot be written as JSON (it "
            "holds a ufunc)") in message


def test_flax_modules_are_refused_naming_the_layer(need):
    linen = pytest.importorskip("flax.linen")
    nnx = pytest.importorskip("flax.nnx")
    for layer in (nn.from_flax(linen.Dense(3)), nn.from_nnx(nnx.Linear(4, 3, rngs=nnx.Rngs(0)))):
        with pytest.raises(fl.SavingError, match=r"model/(flax|nnx)_\w+ \(\w+\) wraps a Flax "
                           r"module \(from_flax/from_nnx\), which JSON cannot hold: rebuild the "
                           r"model in code and restore its weights"):
            architecture.model_to_json(nn.serial(nn.Dense(4), layer))


def test_a_file_naming_other_functions_runs_none_of_them(tmp_path):
    model = nn.serial(nn.Dense(2))
    fl.save_model(tmp_path / "m", model, _state(model, (4,)), "sgd")
    saved = json.loads((tmp_path / "m" / "model.json").read_text())
    saved["architecture"]["layers"][0]["constructor"] = "os.system"
    saved["architecture"]["layers"][0]["arguments"] = {"command": "touch pwned"}
    (tmp_path / "m" / "model.json").write_text(json.dumps(saved))
    with pytest.raises(fl.SavingError, match=r"model/dense_0 \(dense, built by os.system\)"):
        fl.load_model(tmp_path / "m")
    assert not (Path.cwd() / "pwned").exists()


@pytest.mark.parametrize("given, trained_with, record", [
    ("adam", "adam", {"name": "adam"}),
    (fl.optim.keras_adam(), "adam", {"name": "adam"}),
    (fl.optim.torch_adam(), fl.optim.torch_adam(), {"preset": "torch_adam", "arguments": []}),
    (("torch_sgd", {"lr": 0.1, "momentum": 0.9}), fl.optim.torch_sgd(lr=0.1, momentum=0.9),
     {"preset": "torch_sgd", "arguments": [["lr", 0.1], ["momentum", 0.9]]}),
])
def test_the_optimizer_is_recorded_and_rebuilt(tmp_path, given, trained_with, record):
    model = nn.serial(nn.Dense(2))
    state = _state(model, (4,), trained_with)
    fl.save_model(tmp_path / "m", model, state, given)
    assert json.loads((tmp_path / "m" / "model.json").read_text())["optimizer"] == record
    assert fl.saving.load_optimizer(tmp_path / "m") is resolve_optimizer(trained_with)
    _, restored = fl.load_model(tmp_path / "m")
    assert _outputs_equal(restored, state)


def test_an_optax_chain_is_saved_and_asked_for_at_load(tmp_path):
    model = nn.serial(nn.Dense(2))
    chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    state = _state(model, (4,), chain)
    fl.save_model(tmp_path / "m", model, state, chain)
    with pytest.raises(fl.SavingError, match=r"saved without a record of its optimizer .* pass "
                       r"the optimizer it was trained with, load_model\(path, optimizer=...\)"):
        fl.load_model(tmp_path / "m")
    _, restored = fl.load_model(tmp_path / "m", optimizer=chain)
    assert _outputs_equal(restored, state)
    with pytest.raises(CheckpointError, match="optimizer state differs"):
        fl.load_model(tmp_path / "m", optimizer="sgd")


def test_an_optimizer_that_did_not_train_the_state_is_refused(tmp_path):
    model = nn.serial(nn.Dense(2))
    with pytest.raises(fl.SavingError, match="optimizer does not match state.opt_state"):
        fl.save_model(tmp_path / "m", model, _state(model, (4,), "adam"), "sgd")
    with pytest.raises(fl.SavingError, match=r"optimizer torch_adadelta arguments: a function "
                       r"\(.*\) cannot be written as JSON; save with the Optax optimizer "
                       r"itself and pass it to load_model\(path, optimizer=...\)"):
        fl.save_model(tmp_path / "m", model, _state(model, (4,)),
                      ("torch_adadelta", {"schedule": fl.optim.step_lr(1.0)}))
    assert not (tmp_path / "m").exists()


def test_paths_are_never_overwritten_unasked(tmp_path):
    model = nn.serial(nn.Dense(2))
    state = _state(model, (4,))
    fl.save_model(tmp_path / "m", model, state, "sgd")
    with pytest.raises(TypeError, match="state must be a TrainState .*, got dict"):
        fl.save_model(tmp_path / "p", model, state.params, "sgd")
    with pytest.raises(FileExistsError, match="m already exists: pass overwrite=True"):
        fl.save_model(tmp_path / "m", model, state, "sgd")
    bigger = nn.serial(nn.Dense(5))
    fl.save_model(tmp_path / "m", bigger, _state(bigger, (4,)), "sgd", overwrite=True)
    assert fl.load_model(tmp_path / "m")[0] == bigger
    (tmp_path / "notes").mkdir()
    with pytest.raises(fl.SavingError, match="notes exists and is not a saved model"):
        fl.save_model(tmp_path / "notes", model, state, "sgd", overwrite=True)
    with pytest.raises(fl.SavingError, match="notes is not a saved model: it has no model.json"):
        fl.load_model(tmp_path / "notes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "notes"]  # no staging left


def _python_blocks(page: Path, section: str) -> list[str]:
    text = page.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_docs_save_and_load_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    scaled = nn.serial(nn.Dense(3), Scale(0.5, name="gain"))
    namespace = {"model": nn.serial(nn.Dense(3, "softmax")), "x": x,
                 "y": (x[:, 0] > 0).astype(np.int32), "Scale": Scale, "scaled": scaled,
                 "scaled_state": _state(scaled, (8,))}
    blocks = _python_blocks(ROOT / "docs" / "checkpoints.md", "Saving the whole model")
    assert len(blocks) == 2
    exec(blocks[0], namespace)  # noqa: S102
    assert int(namespace["state"].epoch) == 3 and len(namespace["history"].epoch) == 1
    exec(blocks[1], namespace)  # noqa: S102
    assert namespace["scaled"] is not scaled  # the page builds its own
    assert namespace["model"] == namespace["scaled"]

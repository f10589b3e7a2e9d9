"""Export of graph models with named inputs and outputs: a dict or tuple in, a dict or tuple out."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import fnlearn as fl
from fnlearn import nn
from fnlearn.export import export_model, export_saved_model, load_exported
from fnlearn.serve import main as serve

RNG = np.random.default_rng(0)
SHAPES = {"image": (4, 4), "meta": (3,)}


def two_heads() -> nn.Layer:
    """Two inputs (a dict), a Dense/Concatenate body, two outputs (a dict)."""
    image, meta = nn.Input((4, 4), name="image"), nn.Input((3,), name="meta")
    h = nn.Concatenate()([nn.Flatten()(image), nn.Dense(8, "relu")(meta)])
    return nn.Model({"image": image, "meta": meta},
                    {"digit": nn.Dense(3, "softmax")(h), "size": nn.Dense(1)(h)})


def pair() -> nn.Layer:
    """Two inputs (a tuple), two outputs (a tuple)."""
    a, b = nn.Input((3,)), nn.Input((2,))
    h = nn.Concatenate()([nn.Dense(6, "tanh")(a), b])
    return nn.Model((a, b), (nn.Dense(2)(h), nn.Dense(4, "softmax")(h)))


def heads_data(n: int) -> dict:
    return {"image": RNG.normal(size=(n, 4, 4)).astype(np.float32),
            "meta": RNG.normal(size=(n, 3)).astype(np.float32)}


def pair_data(n: int) -> tuple:
    return (RNG.normal(size=(n, 3)).astype(np.float32),
            RNG.integers(-5, 5, size=(n, 2)).astype(np.int32))


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    model = two_heads()
    params = nn.init(model, 0, SHAPES)
    path = export_model(model, params, SHAPES, np.float32,
                        tmp_path_factory.mktemp("named") / "heads.fnx", platforms=("cpu",))
    return model, params, path


def test_dict_inputs_and_outputs_load_as_dicts_equal_to_predict_bit_for_bit(heads):
    model, params, path = heads
    predict = load_exported(path)
    # fnlearn.predict pads to a multiple of 8 rows: at 8 and 64 rows both run the same
    # products, bit for bit; other sizes agree to float32 rounding (as for one input).
    for n in (8, 64):
        x = heads_data(n)
        got, expected = predict(x), fl.predict(model, params, x)
        assert list(got) == ["digit", "size"] and isinstance(got["digit"], np.ndarray)
        for name in ("digit", "size"):
            assert np.array_equal(got[name], expected[name]), (n, name)
            assert np.array_equal(got[name], np.asarray(nn.apply(model, params, x)[0][name]))
    x = heads_data(5)
    for name, value in predict(x).items():
        np.testing.assert_allclose(value, fl.predict(model, params, x)[name], rtol=1e-6,
                                   atol=1e-7)


def test_meta_names_every_input_and_output(heads):
    meta = load_exported(heads[2]).meta
    assert (meta["input_structure"], meta["output_structure"]) == ("dict", "dict")
    assert meta["inputs"] == [{"name": "image", "shape": [4, 4], "dtype": "float32"},
                              {"name": "meta", "shape": [3], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "digit", "shape": [3], "dtype": "float32"},
                               {"name": "size", "shape": [1], "dtype": "float32"}]
    assert "input_shape" not in meta  # one shape cannot describe two inputs


def test_tuple_inputs_and_outputs_with_a_dtype_each(tmp_path):
    model = pair()
    params = nn.init(model, 0, ((3,), (2,)))
    path = export_model(model, params, ((3,), (2,)), (np.float32, np.int32),
                        tmp_path / "pair.fnx", platforms=("cpu",))
    predict = load_exported(path)
    assert predict.signature.input_names == ("input_0", "input_1")
    assert predict.signature.output_names == ("output_0", "output_1")
    assert [i.dtype for i in predict.signature.inputs] == [np.float32, np.int32]
    x = pair_data(8)
    got = predict(x)
    assert isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, fl.predict(model, params, x)):
        assert np.array_equal(a, b)
    with pytest.raises(TypeError, match=r"inputs\[1\] have dtype float32; the exported model "
                                        r"takes int32"):
        predict((x[0], x[1].astype(np.float32)))
    with pytest.raises(ValueError, match="takes a tuple of 2 inputs, got 3"):
        predict((*x, x[0]))
    with pytest.raises(TypeError, match=r"takes a tuple of inputs \['input_0', 'input_1'\], "
                                        r"got dict"):
        predict({"input_0": x[0], "input_1": x[1]})


BAD = [
    ("missing name", lambda x: {"image": x["image"]}, ValueError,
     r"inputs do not match the exported model: missing input 'meta'; the model takes inputs "
     r"\['image', 'meta'\]"),
    ("unknown name", lambda x: {**x, "extra": x["meta"]}, ValueError,
     r"unknown input 'extra'; the model takes inputs \['image', 'meta'\]"),
    ("batch sizes disagree", lambda x: {"image": x["image"], "meta": x["meta"][:3]}, ValueError,
     r"inputs\['meta'\] has 3 examples but inputs\['image'\] has 4: every input must have the "
     r"same batch size"),
    ("one input's shape", lambda x: {**x, "meta": x["meta"][:, :2]}, ValueError,
     r"inputs\['meta'\] of shape \(4, 2\) do not fit the exported model, which takes shape "
     r"\('batch', 3\)"),
    ("NaN in one input", lambda x: {**x, "image": np.full_like(x["image"], np.nan)}, ValueError,
     r"inputs\['image'\] contain NaN or inf \(first at index \(0, 0, 0\)\)"),
    ("an array, not a dict", lambda x: x["image"], TypeError,
     r"the exported model takes a dict of inputs \['image', 'meta'\], got ndarray"),
]


@pytest.mark.parametrize("change, error, message", [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_named_inputs_are_refused_naming_the_input(heads, change, error, message):
    with pytest.raises(error, match=message):
        load_exported(heads[2])(change(heads_data(4)))


def test_float_inputs_is_refused_for_several_inputs_and_dtypes_must_match(heads, tmp_path):
    model, params, _ = heads
    with pytest.raises(ValueError, match=r"float_inputs applies to a model taking one input; "
                                         r"for a model taking \['image', 'meta'\]"):
        export_model(model, params, SHAPES, np.uint8, tmp_path / "f.fnx", float_inputs=True)
    with pytest.raises(ValueError, match="dtype must be one dtype, or a dict matching"):
        export_model(model, params, SHAPES, {"image": np.float32}, tmp_path / "d.fnx")
    with pytest.raises(ValueError, match=r"cannot export the model for inputs of per-example "
                                         r"shapes \{'image': \(4, 4\), 'meta': \(5,\)\}"):
        export_model(model, params, {"image": (4, 4), "meta": (5,)}, np.float32,
                     tmp_path / "s.fnx")


def test_single_input_exports_keep_their_meta_and_files_without_names_still_load(tmp_path):
    model = nn.serial(nn.Dense(4, "relu"), nn.Dense(2))
    params = nn.init(model, 0, (3,))
    path = export_model(model, params, (3,), np.float32, tmp_path / "one.fnx",
                        platforms=("cpu",))
    x = RNG.normal(size=(8, 3)).astype(np.float32)
    predict = load_exported(path)
    assert predict.meta["version"] == 1 and predict.meta["input_shape"] == [3]
    assert predict.meta["dtype"] == "float32" and "output" in predict.meta
    assert (predict.signature.input_names, predict.signature.output_names) == (
        ("inputs",), ("outputs",))
    # A file written before inputs and outputs were named: its meta.json lacks them.
    with zipfile.ZipFile(path) as archive:
        module, meta = archive.read("model.jaxexport"), json.loads(archive.read("meta.json"))
    for key in ("inputs", "outputs", "input_structure", "output_structure"):
        del meta[key]
    with zipfile.ZipFile(tmp_path / "old.fnx", "w") as archive:
        archive.writestr("model.jaxexport", module)
        archive.writestr("meta.json", json.dumps(meta))
    old = load_exported(tmp_path / "old.fnx")
    assert old.signature == predict.signature
    assert np.array_equal(old(x), predict(x)) and np.array_equal(old(x), fl.predict(model,
                                                                                     params, x))


def test_saved_model_signature_takes_and_returns_the_named_tensors(heads, tmp_path, need):
    tf = need("tensorflow")
    model, params, _ = heads
    directory = export_saved_model(model, params, SHAPES, np.float32, tmp_path / "heads",
                                   platforms=("cpu",))
    serving = tf.saved_model.load(str(directory)).signatures["serving_default"]
    assert sorted(serving.structured_input_signature[1]) == ["image", "meta"]
    x = heads_data(6)
    outputs = serving(image=tf.constant(x["image"]), meta=tf.constant(x["meta"]))
    expected = fl.predict(model, params, x)
    assert sorted(outputs) == ["digit", "size"]
    for name in ("digit", "size"):
        np.testing.assert_allclose(outputs[name].numpy(), expected[name], rtol=0, atol=1e-6)
    tuple_model = pair()
    tuple_params = nn.init(tuple_model, 0, ((3,), (2,)))
    directory = export_saved_model(tuple_model, tuple_params, ((3,), (2,)),
                                   (np.float32, np.int32), tmp_path / "pair", platforms=("cpu",))
    serving = tf.saved_model.load(str(directory)).signatures["serving_default"]
    x = pair_data(5)
    outputs = serving(input_0=tf.constant(x[0]), input_1=tf.constant(x[1]))
    assert sorted(outputs) == ["output_0", "output_1"]
    for name, value in zip(("output_0", "output_1"), fl.predict(tuple_model, tuple_params, x)):
        np.testing.assert_allclose(outputs[name].numpy(), value, rtol=0, atol=1e-6)


def test_file_mode_reads_named_inputs_from_npz_and_saves_named_outputs(heads, tmp_path, capsys):
    model, params, path = heads
    x = heads_data(8)
    np.savez(tmp_path / "x.npz", **x)
    assert serve([str(path), str(tmp_path / "x.npz"), "--out", str(tmp_path / "y.npz")]) == 0
    expected = fl.predict(model, params, x)
    printed = capsys.readouterr().out
    assert f"digit argmax: {' '.join(map(str, expected['digit'].argmax(axis=1)))}" in printed
    with np.load(tmp_path / "y.npz") as saved:
        assert sorted(saved.files) == ["digit", "size"]
        assert all(np.array_equal(saved[name], expected[name]) for name in saved.files)
    np.savez(tmp_path / "half.npz", image=x["image"])
    assert serve([str(path), str(tmp_path / "half.npz")]) == 1
    assert "missing input 'meta'" in capsys.readouterr().err

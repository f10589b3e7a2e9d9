"""Export: a file that runs in a fresh process without the model code, any batch size."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fnlearn
from fnlearn import nn
from fnlearn.export import ExportError, export_model, export_saved_model, load_exported
from fnlearn.serve import main as serve

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small MNIST-shaped classifier taking raw uint8 pixels, briefly trained, and its export."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=64).astype(np.int32)
    model = nn.serial(nn.Normalize(0, 255), nn.Flatten(), nn.Dense(16, "relu"),
                      nn.Dense(10, "softmax"))
    state, _ = fnlearn.fit(model, x, y, loss="sparse_categorical_crossentropy",
                           optimizer=fnlearn.optim.keras_adam(), epochs=1, verbose=0)
    path = export_model(model, state.params, (28, 28), np.uint8,
                        tmp_path_factory.mktemp("export") / "model.fnx")
    return model, state.params, path


FRESH_PROCESS = textwrap.dedent("""
    import sys, zipfile
    import jax, numpy as np
    exported = jax.export.deserialize(zipfile.ZipFile(sys.argv[1]).read("model.jaxexport"))
    inputs = np.load(sys.argv[2])
    np.savez(sys.argv[3], b3=np.asarray(exported.call(inputs[:3])),
             b50=np.asarray(exported.call(inputs)))
    assert not any(name.startswith("fnlearn") for name in sys.modules), "model code was imported"
""")


def test_fresh_process_without_model_code_matches_predict_for_two_batch_sizes(trained, tmp_path):
    model, params, path = trained
    x = np.random.default_rng(1).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npz")], env={**ENV, "PYTHONPATH": ""},
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert np.array_equal(out["b3"], fnlearn.predict(model, params, x[:3]))
    assert np.array_equal(out["b50"], fnlearn.predict(model, params, x))


def test_load_exported_matches_predict_and_takes_any_batch_size(trained):
    model, params, path = trained
    predict = load_exported(path)
    x = np.random.default_rng(2).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    # fnlearn.predict pads to a multiple of 8 rows (one program for nearby sizes); at 8
    # rows both run the same product, bit for bit; other sizes agree to float32 rounding.
    x = np.random.default_rng(2).integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    assert np.array_equal(predict(x), fnlearn.predict(model, params, x))
    for batch in (1, 7):
        np.testing.assert_allclose(predict(x[:batch]), fnlearn.predict(model, params, x[:batch]),
                                   rtol=1e-6, atol=1e-7)
    assert predict.meta["input_shape"] == [28, 28] and predict.meta["dtype"] == "uint8"


def test_serve_command_prints_argmax_and_saves_outputs(trained, tmp_path):
    model, params, path = trained
    x = np.random.default_rng(3).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-m", "fnlearn.serve", str(path),
                           str(tmp_path / "x.npy"), "--out", str(tmp_path / "out.npy")],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = fnlearn.predict(model, params, x)
    assert done.stdout.strip() == "argmax: " + " ".join(map(str, expected.argmax(axis=1)))
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)


def test_saved_model_round_trip(trained, tmp_path, need):
    tf = need("tensorflow")
    model, params, _ = trained
    directory = export_saved_model(model, params, (28, 28), np.uint8, tmp_path / "saved_model")
    serving = tf.saved_model.load(str(directory)).signatures["serving_default"]
    x = np.random.default_rng(4).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    for batch in (2, 6):
        outputs = serving(inputs=tf.constant(x[:batch]))["outputs"].numpy()
        np.testing.assert_allclose(outputs, fnlearn.predict(model, params, x[:batch]),
                                   rtol=0, atol=1e-6)


def test_truncated_export_fails_naming_the_file(trained, tmp_path):
    damaged = tmp_path / "truncated.fnx"
    data = trained[2].read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match=f"{damaged} is corrupt, truncated or not an fnlearn"):
        load_exported(damaged)


def test_zeroed_bytes_anywhere_in_an_export_are_refused_or_harmless(trained, tmp_path):
    """Zeroes one byte at a time, every 97th position over the whole file.

    Damage inside a member fails its CRC-32 and damage to the zip's structure
    fails to parse: either way ExportError, never zlib.error or another type. A
    few header bytes (a member's timestamp) change nothing that is read; those
    loads must predict exactly as the intact file does.
    """
    model, params, path = trained
    data = path.read_bytes()
    x = np.random.default_rng(1).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    expected = load_exported(path)(x)
    damaged = tmp_path / "damaged.fnx"
    refused, harmless = 0, []
    for position in range(0, len(data), 97):
        if data[position] == 0:
            continue
        damaged.write_bytes(data[:position] + b"\0" + data[position + 1:])
        try:
            predict = load_exported(damaged)
        except ExportError as error:
            assert str(damaged) in str(error)
            refused += 1
            continue
        np.testing.assert_array_equal(predict(x), expected, err_msg=f"byte {position}")
        harmless.append(position)
    print(f"\n{len(data)} bytes: {refused} damaged positions refused, harmless: {harmless}")
    assert refused > 0.95 * (refused + len(harmless)) and refused > len(data) // 97 // 2


def test_missing_export_and_non_export_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.fnx"):
        load_exported(tmp_path / "absent.fnx")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ExportError, match="array.npy is corrupt, truncated or not an fnlearn"):
        load_exported(tmp_path / "array.npy")


@pytest.mark.parametrize("inputs, error, message", [
    (np.zeros((2, 28, 27), np.uint8), ValueError,
     r"shape \(2, 28, 27\) do not fit .* \('batch', 28, 28\)"),
    (np.zeros((28, 28), np.uint8), ValueError, r"shape \(28, 28\) do not fit"),
    (np.zeros((0, 28, 28), np.uint8), ValueError, "inputs are empty"),
    (np.zeros((2, 28, 28), np.float32), TypeError, "dtype float32; the exported model takes uint8"),
    (np.zeros((2, 28, 28), object), TypeError, "numeric array, got dtype object"),
])
def test_loaded_model_rejects_bad_inputs(trained, inputs, error, message):
    with pytest.raises(error, match=message):
        load_exported(trained[2])(inputs)


def test_loaded_model_rejects_nan_inputs(tmp_path):
    model = nn.serial(nn.Dense(2))
    path = export_model(model, nn.init(model, 0, (3,)), (3,), np.float32, tmp_path / "m.fnx")
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(first at index \(2, 1\)\)"):
        load_exported(path)(x)


def test_export_of_a_model_that_does_not_fit_the_input_shape_fails(tmp_path):
    model = nn.serial(nn.Dense(2))
    params = nn.init(model, 0, (3,))
    with pytest.raises(ValueError, match=r"cannot export the model for inputs of per-example "
                                         r"shape \(4,\)"):
        export_model(model, params, (4,), np.float32, tmp_path / "unused.fnx")


def test_serve_reports_bad_input_files(trained, tmp_path, capsys):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    assert serve([str(trained[2]), str(tmp_path / "objects.npy")]) == 1
    assert "cannot read inputs from" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3), np.uint8))
    assert serve([str(trained[2]), str(tmp_path / "wrong.npy")]) == 1
    assert "do not fit the exported model" in capsys.readouterr().err


def test_float_inputs_export_takes_pixels_over_255_and_answers_as_the_uint8_export(trained,
                                                                                  tmp_path):
    model, params, path = trained
    float_path = export_model(model, params, (28, 28), np.uint8,
                              tmp_path / "versions" / "2" / "model.fnx", float_inputs=True)
    x = np.random.default_rng(4).integers(0, 256, size=(9, 28, 28), dtype=np.uint8)
    predict = load_exported(float_path)
    assert predict.meta["dtype"] == "float32" and predict.meta["input_range"] == [0.0, 1.0]
    # What TensorFlow's tutorial client sends: pixels / 255.0, cast to float32 on the way.
    assert np.array_equal(predict((x / 255.0).astype(np.float32)), load_exported(path)(x))
    with pytest.raises(ValueError, match=r"inputs hold 1.5 at index \(0, 0, 0\), outside the "
                                         r"exported model's input range \[0.0, 1.0\]"):
        predict(np.full((1, 28, 28), 1.5, np.float32))
    with pytest.raises(ValueError, match="float_inputs scales .* got dtype float32"):
        export_model(model, params, (28, 28), np.float32, tmp_path / "f.fnx", float_inputs=True)
    # Written under a hidden name and renamed: the folder holds the one file, complete.
    assert [p.name for p in (tmp_path / "versions" / "2").iterdir()] == ["model.fnx"]

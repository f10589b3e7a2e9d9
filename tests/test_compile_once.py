"""Equivalent calls compile nothing new; the state is donated; device data stays put; x64."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np

import fnlearn as fl
from fnlearn import nn

ROOT = Path(__file__).resolve().parents[1]
LOSS = "sparse_categorical_crossentropy"


def blobs(n, seed=0):
    centers = np.random.default_rng(0).normal(size=(3, 8)) * 3
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    return (centers[y] + rng.normal(size=(n, 8))).astype(np.float32), y


def mlp():
    return nn.serial(nn.Dense(16, "relu"), nn.Dropout(0.1), nn.Dense(3, "softmax"))


def programs_compiled(fn) -> int:
    with fl.count_compilations() as compiled:
        fn()
    return sum(compiled.values())


def test_a_keras_optimizer_name_builds_one_optimizer():
    x, y = blobs(200)
    model = mlp()

    def run():
        fl.fit(model, x, y, loss=LOSS, optimizer="adam", epochs=1, verbose=0)

    run()
    assert programs_compiled(run) == 0
    assert fl.optim.get_optimizer("adam") is fl.optim.get_optimizer("Adam")


def test_nearby_example_counts_share_evaluate_predict_and_validation_programs():
    x, y = blobs(600)
    model = mlp()
    state, _ = fl.fit(model, x, y, loss=LOSS, optimizer="adam", epochs=1, verbose=0,
                      validation_data=(x[:100], y[:100]))

    def evaluate(n):
        return fl.evaluate(model, state.params, x[:n], y[:n], loss=LOSS, metrics=["accuracy"])

    first = evaluate(500)
    assert programs_compiled(lambda: evaluate(499)) == 0
    # The count is a runtime value: the 499 examples are exactly those counted.
    expected = np.mean(fl.predict(model, state.params, x[:499]).argmax(-1) == y[:499])
    assert evaluate(499)["accuracy"] == np.float32(expected) and first != evaluate(499)
    fl.predict(model, state.params, x[:300])
    assert programs_compiled(lambda: fl.predict(model, state.params, x[:301])) == 0
    assert fl.predict(model, state.params, x[:301]).shape == (301, 3)
    assert programs_compiled(lambda: fl.fit(
        model, x, y, loss=LOSS, optimizer="adam", epochs=1, verbose=0,
        validation_data=(x[:99], y[:99]))) == 0


def test_the_training_programs_donate_the_state():
    from fnlearn.loop import compiled as programs

    x, y = blobs(256)
    model, optimizer = mlp(), fl.optim.keras_adam()
    state = fl.init_state(model, optimizer, (8,))
    step = fl.step.supervised(model, LOSS, optimizer)
    lowered = programs.train_epochs.lower(
        state, (x, y), None, np.int32(0), np.int32(1), step=step, num_examples=256,
        batch_size=32, shuffle=True, layout=fl.step.NO_LAYOUT, chunk=1024)
    state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    assert lowered.compile().memory_analysis().alias_size_in_bytes == state_bytes
    # The caller's own state survives fit (fit donates a copy of it).
    fl.fit(model, x, y, loss=LOSS, optimizer=optimizer, epochs=1, verbose=0, state=state)
    assert int(state.step) == 0 and np.asarray(state.params["dense_0"]["kernel"]).size


def _run(program: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(program)], env=environment,
                          capture_output=True, text=True, timeout=300)


def test_device_arrays_are_not_pulled_to_the_host():
    # With JAX's transfer guard logging, fit, evaluate and predict on device-resident data
    # upload scalars only; taking the data through NumPy and back on purpose (what they
    # did before) shows what a data-sized upload looks like in the same log.
    done = _run("""
        import jax, numpy as np, fnlearn as fl
        rng = np.random.default_rng(0)
        x = rng.normal(size=(512, 8)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int32)
        model = fl.nn.serial(fl.nn.Dense(8, "relu"), fl.nn.Dense(2, "softmax"))
        state, _ = fl.fit(model, x, y, loss="sparse_categorical_crossentropy", optimizer="adam",
                          epochs=1, verbose=0, validation_data=(x[:64], y[:64]))
        xd, yd = jax.device_put((x, y))
        with jax.transfer_guard("log"):
            fl.fit(model, xd, yd, loss="sparse_categorical_crossentropy", optimizer="adam",
                   epochs=2, verbose=0, state=state, validation_data=(xd[:64], yd[:64]))
            fl.evaluate(model, state.params, xd, yd, loss="sparse_categorical_crossentropy")
            fl.predict(model, state.params, xd)
            jax.numpy.asarray(np.asarray(xd))
        """)
    assert done.returncode == 0, done.stderr[-3000:]
    shapes = [tuple(int(d) for d in dims.split(",") if d) for dims in
              re.findall(r"aval=ShapedArray\(\w+\[([\d,]*)\]", done.stderr)]
    assert shapes, "the transfer guard logged nothing: the test would not see a transfer"
    assert max(np.prod(s, dtype=int) for s in shapes) == 512 * 8  # the deliberate one
    data_sized = [s for s in shapes if np.prod(s, dtype=int) > 64]
    assert data_sized == [(512, 8)], data_sized


def test_x64_trains_float32_parameters_with_the_same_numbers():
    program = """
        import json, numpy as np, fnlearn as fl
        rng = np.random.default_rng(0)
        x = rng.normal(size=(256, 8)).astype(np.float32)
        y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
        model = fl.nn.serial(fl.nn.Dense(8, "relu"), fl.nn.Dropout(0.3), fl.nn.Dense(2, "softmax"))
        state, history = fl.fit(model, x, y, loss="sparse_categorical_crossentropy",
                                optimizer="adam", metrics=["accuracy"], epochs=2, verbose=0,
                                validation_data=(x[:50], y[:50]))
        print(json.dumps({"history": history.history,
                          "dtype": str(state.params["dense_0"]["kernel"].dtype)}))
        """
    runs = {}
    for x64 in ("0", "1"):
        done = _run(program, JAX_ENABLE_X64=x64)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[x64] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs["1"]["dtype"] == runs["0"]["dtype"] == "float32"
    np.testing.assert_allclose(runs["1"]["history"]["loss"], runs["0"]["history"]["loss"],
                               rtol=1e-6)
    assert runs["1"]["history"].keys() == runs["0"]["history"].keys()

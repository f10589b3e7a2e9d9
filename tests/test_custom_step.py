"""A custom step inside fit: the contract of docs/training.md ("Your own step in fit")."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnlearn as fl
from fnlearn import nn

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

ENV = {**os.environ, "PYTHONPATH": str(TESTS.parent), "JAX_PLATFORMS": "cpu"}
AUTOENCODER = nn.serial(nn.Dense(4, "relu"), nn.Dense(8))
OPTIMIZER = optax.adam(1e-2)


def points(n=100):
    return np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)


def autoencoder_step(state, batch, key):
    """Unsupervised: reconstruct the inputs; the padded rows of the last batch count nothing."""
    def loss(params):
        out = AUTOENCODER.apply(params, batch.x)
        return fl.masked_mean(jnp.mean((out - batch.x) ** 2, -1), batch.mask)

    value, grads = jax.value_and_grad(loss)(state.params)
    return fl.apply_gradients(state, grads, OPTIMIZER), {"reconstruction": value}


def fresh_state():
    return fl.init_state(AUTOENCODER, OPTIMIZER, (8,), seed=1)


def test_an_unsupervised_step_trains_from_arrays_without_labels():
    x = points()
    state, history = fl.fit(AUTOENCODER, x, None, step=autoencoder_step, optimizer=OPTIMIZER,
                            epochs=5, batch_size=32, verbose=0)
    losses = history.history["reconstruction"]
    assert list(history.history) == ["reconstruction"] and losses[-1] < 0.8 * losses[0]
    # 100 examples in batches of 32: 4 steps an epoch; the loop counts them.
    assert int(state.step) == 20 and int(state.epoch) == 5


def test_the_masked_last_batch_and_the_epoch_mean_count_every_example_once():
    # Zero learning rate: the epoch's logged value must be the plain mean over all 100.
    still = optax.sgd(0.0)

    def step(state, batch, key):
        out = AUTOENCODER.apply(state.params, batch.x)
        value = fl.masked_mean(jnp.mean((out - batch.x) ** 2, -1), batch.mask)
        return state, {"mse": value}

    x = points()
    start = fl.init_state(AUTOENCODER, still, (8,), seed=1)
    _, history = fl.fit(None, x, None, step=step, state=start, epochs=1, batch_size=32,
                        verbose=0)
    out = AUTOENCODER.apply(start.params, x)
    expected = float(np.mean(np.mean((np.asarray(out) - x) ** 2, -1), dtype=np.float64))
    assert history.history["mse"][0] == pytest.approx(expected, rel=1e-6)


def test_one_compilation_whatever_the_epoch_count():
    def step(state, batch, key):  # a step of its own: nothing compiled for it yet
        return autoencoder_step(state, batch, key)

    x = points()
    counts = []
    for epochs in (1, 2, 3):
        with fl.count_compilations() as compiled:
            fl.fit(None, x, None, step=step, state=fresh_state(), epochs=epochs,
                   batch_size=32, verbose=0)
        counts.append(compiled["jit(_train_epochs)"])
    assert counts == [1, 0, 0]


def test_callbacks_and_batch_level_logs_see_the_step_s_metrics(tmp_path):
    path = tmp_path / "log.csv"
    fl.fit(None, points(), None, step=autoencoder_step, state=fresh_state(), epochs=2,
           batch_size=32, verbose=0, callbacks=[fl.CSVLogger(path, update_freq=2)])
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert rows[0] == ["epoch", "batch", "reconstruction"]
    assert [row[:2] for row in rows[1:]] == [["0", "2"], ["0", "4"], ["1", "2"], ["1", "4"]]


def test_validation_and_evaluate_take_an_evaluation_step():
    def eval_step(state, batch):
        out = AUTOENCODER.apply(state.params, batch.x)
        return {"reconstruction": fl.masked_mean(jnp.mean((out - batch.x) ** 2, -1),
                                                 batch.mask)}

    x = points(160)
    state, history = fl.fit(None, x[:100], None, step=autoencoder_step, eval_step=eval_step,
                            state=fresh_state(), epochs=2, batch_size=32, verbose=0,
                            validation_data=(x[100:], None))
    result = fl.evaluate(None, None, x[100:], eval_step=eval_step, state=state)
    assert result["reconstruction"] == pytest.approx(history.history["val_reconstruction"][-1],
                                                     rel=1e-6)


def test_a_two_network_state_resumes_bit_identically_after_sigkill(tmp_path):
    def run(*args):
        done = subprocess.run([sys.executable, str(TESTS / "custom_step_worker.py"), *args],
                              env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    run(str(tmp_path / "full"), str(tmp_path / "full.npz"))
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(TESTS / "custom_step_worker.py"), str(killed),
         str(tmp_path / "killed.npz"), "--epoch-sleep", "0.3"], env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.isdigit() for p in killed.glob("*")) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    saved = sorted(int(p.name) for p in killed.iterdir() if p.name.isdigit())
    assert saved and saved[-1] < 6, "killed too late to resume"
    log = run(str(killed), str(tmp_path / "killed.npz"), "--resume")
    full, resumed = np.load(tmp_path / "full.npz"), np.load(tmp_path / "killed.npz")
    assert sorted(full) == sorted(resumed)
    assert [k for k in full if not np.array_equal(full[k], resumed[k])] == []
    # 448 points in batches of 32: the resumed process itself ran the steps left.
    assert f"step {6 * 14}" in log


def test_a_mesh_of_four_devices_trains_the_custom_step_like_one(tmp_path):
    outputs = {}
    for devices in ("1", "4"):
        env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
        done = subprocess.run([sys.executable, str(TESTS / "custom_step_worker.py"), "-",
                               str(tmp_path / f"{devices}.npz"), "--devices", devices,
                               "--epochs", "2"], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[devices] = np.load(tmp_path / f"{devices}.npz")
    one, four = outputs["1"], outputs["4"]
    np.testing.assert_allclose(four["history_g_loss"], one["history_g_loss"], rtol=1e-5)
    for name in one:
        np.testing.assert_allclose(four[name], one[name], atol=1e-5, err_msg=name)


def test_the_step_s_mistakes_are_named_before_training():
    x = points()

    def not_a_dict(state, batch, key):
        return state, [1.0]

    def not_scalars(state, batch, key):
        return state, {"per_example": jnp.sum(batch.x, -1)}

    def changes_structure(state, batch, key):
        return state._replace(params={"extra": state.params}), {"loss": jnp.float32(0)}

    def not_jittable(state, batch, key):
        if jnp.sum(batch.x) > 0:  # Python control flow on a traced value
            return state, {"loss": jnp.float32(1)}
        return state, {"loss": jnp.float32(0)}

    cases = [(not_a_dict, TypeError, "the step 'not_a_dict' must return .* a dict"),
             (not_scalars, ValueError, "metric 'per_example' of shape \\(1,\\)"),
             (changes_structure, ValueError, "the step 'changes_structure' returned a state of "
                                             "another structure"),
             (not_jittable, ValueError, "the step 'not_jittable' is not jittable")]
    for step, error, message in cases:
        with pytest.raises(error, match=message):
            fl.fit(None, x, None, step=step, state=fresh_state(), epochs=1, batch_size=32,
                   verbose=0)

"""Checkpoints: round trip, keep-last-K, refusals, and runs killed mid-epoch and mid-save."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fnlearn
from fnlearn import nn, optim
from fnlearn.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from fnlearn.state import History

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# After a failed read, Orbax can leave an asyncio callback that fires once its loop is
# closed; it is reported later, against whichever test is running then. Harmless.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def small_state(hidden: int = 8, seed: int = 0):
    model = nn.serial(nn.Dense(hidden, "relu"), nn.Dense(3, "softmax"))
    return fnlearn.init_state(model, optim.keras_adam(), (4,), seed=seed)


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True))


def committed(directory: Path) -> list[int]:
    """Committed checkpoint epochs, read from the directory listing (no Orbax import)."""
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
        if directory.is_dir() else []


def test_round_trip_restores_state_history_and_metadata(tmp_path):
    state = small_state()._replace(epoch=np.int32(2), step=np.int32(30))
    history = History({"loss": [0.9, 0.5]}, [0, 1], [1.0, 0.1])
    path = save_checkpoint(tmp_path, state, history, metadata={"best": 0.5})
    assert path == tmp_path / "2" and latest_checkpoint(tmp_path) == path

    restored, restored_history, metadata = restore_checkpoint(tmp_path, small_state(seed=1))
    assert isinstance(restored, fnlearn.TrainState)
    assert leaves_equal(restored, state)
    assert restored_history == history
    assert metadata == {"best": 0.5}


def test_keeps_the_last_k_and_restores_any_kept_epoch(tmp_path):
    state = small_state()
    for epoch in range(1, 6):
        save_checkpoint(tmp_path, state._replace(epoch=np.int32(epoch)), keep=2)
    assert committed(tmp_path) == [4, 5]
    assert int(restore_checkpoint(tmp_path, state, epoch=4)[0].epoch) == 4
    with pytest.raises(CheckpointError, match=r"no checkpoint for epoch 2 .* available: \[4, 5\]"):
        restore_checkpoint(tmp_path, state, epoch=2)


def test_step_is_a_deprecated_alias_of_epoch(tmp_path):
    state = small_state()
    for epoch in (1, 2):
        save_checkpoint(tmp_path, state._replace(epoch=np.int32(epoch), step=np.int32(7 * epoch)))
    with pytest.warns(DeprecationWarning, match=r"step=\.\.\.\) is deprecated: pass epoch="):
        restored = restore_checkpoint(tmp_path, state, step=1)[0]
    assert (int(restored.epoch), int(restored.step)) == (1, 7)
    with pytest.warns(DeprecationWarning), \
            pytest.raises(ValueError, match="pass epoch or its deprecated alias step, not both"):
        restore_checkpoint(tmp_path, state, epoch=2, step=1)


def test_no_checkpoint_is_reported(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None
    with pytest.raises(CheckpointError, match="no checkpoint found in .*absent"):
        restore_checkpoint(tmp_path / "absent", small_state())


def test_saving_an_epoch_twice_is_refused(tmp_path):
    save_checkpoint(tmp_path, small_state())
    with pytest.raises(CheckpointError, match="already exists: a checkpoint for epoch 0"):
        save_checkpoint(tmp_path, small_state())


def test_checkpoint_from_a_different_model_is_refused_naming_the_leaves(tmp_path):
    save_checkpoint(tmp_path, small_state(hidden=8))
    with pytest.raises(CheckpointError, match=r"different model or optimizer structure") as error:
        restore_checkpoint(tmp_path, small_state(hidden=16))
    assert r".params['dense_0']['kernel']: checkpoint has (4, 8) float32, model expects (4, 16)" \
        in str(error.value)

    other = fnlearn.init_state(nn.serial(nn.Dense(8, "relu"), nn.Dense(8), nn.Dense(3)),
                               optim.keras_adam(), (4,))
    with pytest.raises(CheckpointError, match=r"\.params\['dense_2'\]\['bias'\]: missing from the "
                                              "checkpoint"):
        restore_checkpoint(tmp_path, other)


def test_checkpoint_of_another_optimizer_is_summarized(tmp_path):
    save_checkpoint(tmp_path, small_state())  # keras_adam: inject_hyperparams state
    model = nn.serial(nn.Dense(8, "relu"), nn.Dense(3, "softmax"))
    rmsprop = fnlearn.init_state(model, "rmsprop", (4,))
    with pytest.raises(CheckpointError, match=r"optimizer state differs \(trained with another "
                                              r"optimizer\?\): \d+ leaves, the first:") as error:
        restore_checkpoint(tmp_path, rmsprop)
    message = str(error.value)
    # One header, the summary, three leaves and the fix: not one line per optimizer leaf.
    assert message.count("\n") == 5 and len(message) < 800, message
    assert ".params" not in message
    assert message.endswith("for inference, fnlearn.restore_params(directory, model, "
                            "input_shape) reads the parameters without any optimizer")
    # The fix it names works: the parameters come back without the optimizer that trained them.
    params, _ = fnlearn.restore_params(tmp_path, model, (4,))
    assert leaves_equal(params, small_state().params)


def test_restore_params_reads_the_parameters_without_the_optimizer(tmp_path):
    model = nn.serial(nn.Dense(8, "relu"), nn.Dense(3, "softmax"))
    trained = [fnlearn.init_state(model, "sgd", (4,), seed=s)._replace(epoch=np.int32(s))
               for s in (1, 2)]
    for state in trained:
        save_checkpoint(tmp_path, state)
    params, model_state = fnlearn.restore_params(tmp_path, model, (4,))
    assert leaves_equal(params, trained[1].params) and model_state == {}
    assert leaves_equal(fnlearn.restore_params(tmp_path, model, (4,), epoch=1)[0],
                        trained[0].params)
    with pytest.raises(CheckpointError, match=r"different model:\n  \.params\['dense_0'\]"
                                              r"\['bias'\]: checkpoint has \(8,\) float32, "
                                              r"model expects \(9,\)"):
        fnlearn.restore_params(tmp_path, nn.serial(nn.Dense(9, "relu"), nn.Dense(3)), (4,))


def test_restore_params_checks_the_digest_of_the_parameters(tmp_path):
    model = nn.serial(nn.Dense(8, "relu"), nn.Dense(3, "softmax"))
    state = fnlearn.init_state(model, "sgd", (4,))
    path = save_checkpoint(tmp_path, state)
    meta_file = path / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["digests"]["params"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="corrupt: its params do not match the digest"):
        fnlearn.restore_params(tmp_path, model, (4,))


def _data_files(checkpoint: Path) -> list[Path]:
    return sorted(p for p in (checkpoint / "state").rglob("*")
                  if p.is_file() and p.parent.name == "d")


def test_truncated_checkpoint_fails_naming_its_path(tmp_path):
    path = save_checkpoint(tmp_path, small_state())
    for file in _data_files(path):
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt or truncated"):
        restore_checkpoint(tmp_path, small_state())


def test_flipped_bytes_fail_naming_the_path(tmp_path):
    state = small_state()
    path = save_checkpoint(tmp_path, state)
    for file in _data_files(path):
        data = bytearray(file.read_bytes())
        middle = len(data) // 2
        data[middle: middle + 16] = bytes(16)
        file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt"):
        restore_checkpoint(tmp_path, state)


def test_arrays_not_matching_their_digest_are_refused(tmp_path):
    # Stands in for damage the array format itself cannot see: the digest saved with
    # the arrays no longer matches them.
    path = save_checkpoint(tmp_path, small_state())
    meta_file = path / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["digest"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt: its arrays do not "
                                              "match the digest"):
        restore_checkpoint(tmp_path, small_state())


def test_corrupt_metadata_fails_naming_its_path(tmp_path):
    path = save_checkpoint(tmp_path, small_state())
    (path / "meta" / "metadata").write_text('{"format": "fnlearn-checkp')
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt or truncated: "
                                              "cannot read its metadata"):
        restore_checkpoint(tmp_path, small_state())


def _run_worker(*args: str, timeout: float = 180) -> str:
    done = subprocess.run([sys.executable, str(TESTS / "resume_worker.py"), *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_run_killed_at_a_random_point_resumes_bit_identically(tmp_path):
    epochs = "8"
    _run_worker(str(tmp_path / "full"), str(tmp_path / "full.npz"), "--epochs", epochs)

    seed = random.randrange(2**32)
    delay = random.Random(seed).uniform(0.0, 1.5)
    killed_dir, killed_out = tmp_path / "killed", tmp_path / "killed.npz"
    worker = subprocess.Popen(
        [sys.executable, str(TESTS / "resume_worker.py"), str(killed_dir), str(killed_out),
         "--epochs", epochs, "--epoch-sleep", "0.3"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not committed(killed_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert committed(killed_dir), "the worker saved no checkpoint in 120 s"
        time.sleep(delay)
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    at_kill = committed(killed_dir)
    assert not killed_out.exists() and at_kill[-1] < int(epochs), "killed too late to resume"

    log = _run_worker(str(killed_dir), str(killed_out), "--epochs", epochs, "--resume")
    assert f"resuming from {killed_dir / str(at_kill[-1])}" in log
    # The resumed process trained only what was left: a resume that silently started
    # over would run all 8 epochs (112 steps) here and could still end bit-identical.
    steps_per_epoch = 448 // 32
    assert (f"this process: epochs {at_kill[-1]}..{epochs}, steps "
            f"{at_kill[-1] * steps_per_epoch}..{int(epochs) * steps_per_epoch}") in log, log

    full, resumed = np.load(tmp_path / "full.npz"), np.load(killed_out)
    assert sorted(full) == sorted(resumed)
    equal = [name for name in full if np.array_equal(full[name], resumed[name])]
    print(f"\nkilled {delay:.2f}s after the first checkpoint (seed {seed}); checkpoints at kill: "
          f"{at_kill}; resumed from epoch {at_kill[-1]} to {epochs}; "
          f"{len(equal)}/{len(full)} leaves of the final TrainState bit-identical to the "
          "uninterrupted run")
    assert len(equal) == len(full)


MAX_KILLS = 10


def test_process_killed_mid_save_leaves_the_previous_checkpoint_intact(tmp_path):
    sys.path.insert(0, str(TESTS))
    from save_worker import state_of

    template = state_of(0)
    rng = random.Random()
    torn = attempts = 0
    # At least three kills, and retries (bounded) until one lands inside a save.
    for attempt in range(MAX_KILLS):
        attempts += 1
        before = committed(tmp_path)
        worker = subprocess.Popen([sys.executable, str(TESTS / "save_worker.py"), str(tmp_path)],
                                  env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            # Wait for a new commit, then kill as soon as the next save's temporary
            # directory shows up (or at a random moment if none is seen in time).
            while committed(tmp_path) == before and time.monotonic() < deadline:
                time.sleep(0.005)
            stop = time.monotonic() + rng.uniform(0.2, 1.0)
            while time.monotonic() < stop:
                if any("tmp" in p.name for p in tmp_path.iterdir()):
                    break
                time.sleep(0.001)
            in_save = any("tmp" in p.name for p in tmp_path.iterdir())
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        torn += in_save
        latest = latest_checkpoint(tmp_path)
        assert latest is not None and "tmp" not in latest.name
        state, history, _ = restore_checkpoint(tmp_path, template)
        epoch = int(latest.name)
        assert all(np.all(leaf == epoch) for leaf in jax.tree.leaves(state)), \
            f"attempt {attempt}: checkpoint {latest} is not entirely epoch {epoch}"
        assert history.history["loss"] == [float(epoch)]
        if attempts >= 3 and torn:
            break
    print(f"\n{attempts} kills, {torn} while a save's temporary directory existed; "
          "the latest committed checkpoint restored whole each time")
    assert torn >= 1, f"none of {attempts} kills landed during a save"


def _docs_example(section: str) -> str:
    """The first Python block under ``## <section>`` in docs/checkpoints.md."""
    text = (ROOT / "docs" / "checkpoints.md").read_text()
    body = text.split(f"## {section}\n", 1)[1]
    return body.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_docs_inference_examples_run_on_a_batch_norm_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = nn.serial(nn.Normalize(0, 255), nn.Reshape((28, 28, 1)), nn.Conv2D(4, (3, 3)),
                      nn.BatchNorm(), nn.ReLU(), nn.Flatten(), nn.Dense(10, "softmax"))
    images = np.random.default_rng(0).integers(0, 256, (48, 28, 28), dtype=np.uint8)
    state, _ = fnlearn.fit(model, images, np.arange(48) % 10,
                           loss="sparse_categorical_crossentropy", optimizer="adam",
                           batch_size=16, verbose=0,
                           callbacks=[fnlearn.ModelCheckpoint("runs/mnist", verbose=0)])
    expected = fnlearn.predict(model, state.params, images, model_state=state.model_state)

    restoring = {"model": model, "images": images}
    exec(_docs_example("Restoring for inference"), restoring)
    np.testing.assert_array_equal(restoring["probabilities"], expected)
    exporting = {"model": model, "images": images, "state": state, "np": np}
    exec(_docs_example("Export for serving"), exporting)
    np.testing.assert_array_equal(exporting["probabilities"], expected)

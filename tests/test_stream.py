"""Streamed fit from data sources: equal to in-memory fit bit for bit, adapters, refusals,
and a run killed with SIGKILL in the middle of an epoch that resumes bit-identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fnlearn
from fnlearn import nn, optim, sources
from fnlearn.callbacks import ModelCheckpoint
from fnlearn.state import History, NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _data(n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, np.argmax(x @ rng.normal(size=(8, 3)), axis=1).astype(np.int32)


def _model():
    return nn.serial(nn.Dense(16, "relu"), nn.Dropout(0.25), nn.Dense(3, "softmax"))


FIT = dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"], epochs=3,
           batch_size=32, seed=3, verbose=0)


def _fit(x, y=None, **kwargs):
    return fnlearn.fit(_model(), x, y, optimizer=optim.keras_adam(), **{**FIT, **kwargs})


def _equal_leaves(a, b) -> int:
    """How many leaves differ between two pytrees (0: bit-identical)."""
    return sum(not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                        strict=True))


def test_streamed_run_equals_in_memory_run_bit_for_bit():
    x, y = _data()
    memory_state, memory_history = _fit(x, y)
    # 16 steps per epoch in calls of 5: three full calls and a short one, last batch padded.
    streamed_state, streamed_history = _fit(
        sources.stream(sources.ArraySource(x, y), steps_per_call=5))
    assert _equal_leaves(memory_state, streamed_state) == 0
    assert int(streamed_state.step) == 3 * 16 and int(streamed_state.epoch) == 3
    np.testing.assert_allclose(streamed_history.history["loss"], memory_history.history["loss"],
                               rtol=1e-6)


def test_arrays_with_mid_epoch_checkpoints_stream_and_train_the_same(tmp_path, capsys):
    x, y = _data()
    reference, _ = _fit(x, y, epochs=2)
    every_5 = ModelCheckpoint(tmp_path / "5", save_every_steps=5, keep=20, verbose=0)
    every_6 = ModelCheckpoint(tmp_path / "6", save_every_steps=6, keep=20, verbose=0)
    state, history = _fit(x, y, epochs=2, verbose=1, callbacks=[every_5, every_6])
    assert _equal_leaves(reference, state) == 0
    # 16 steps an epoch: saves at batches 5, 10, 15 (or 6, 12) and at each epoch's end, by step.
    assert sorted(int(p.name) for p in (tmp_path / "5").iterdir()) == [
        5, 10, 15, 16, 21, 26, 31, 32]
    assert sorted(int(p.name) for p in (tmp_path / "6").iterdir()) == [6, 12, 16, 22, 28, 32]
    assert "16/16" in capsys.readouterr().err


def test_validation_split_with_mid_epoch_checkpoints_matches_in_memory(tmp_path):
    x, y = _data()
    reference, reference_history = _fit(x, y, epochs=1, validation_split=0.2)
    state, history = _fit(x, y, epochs=1, validation_split=0.2, callbacks=[
        ModelCheckpoint(tmp_path, save_every_steps=4, verbose=0)])
    assert _equal_leaves(reference, state) == 0
    np.testing.assert_allclose(history.history["val_loss"],
                               reference_history.history["val_loss"], rtol=1e-6)


class DictSource:
    """A tfds ``data_source`` look-alike: items are dicts, read one at a time."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "target": self.y[i]}


def test_dict_items_with_named_keys_and_grain_datasets_train_the_same():
    import grain

    x, y = _data()
    reference, _ = _fit(sources.ArraySource(x, y), epochs=1)
    keyed, _ = _fit(sources.stream(DictSource(x, y), keys=("features", "target")), epochs=1)
    dataset = grain.MapDataset.source(np.arange(len(x))).map(lambda i: (x[i], y[i]))
    from_grain, _ = _fit(dataset, epochs=1)
    assert _equal_leaves(reference, keyed) == 0
    # Validation items that are dicts are read with the training source's keys; pairs as pairs.
    _, dict_validation = _fit(sources.stream(DictSource(x, y), keys=("features", "target")),
                              epochs=1, validation_data=DictSource(x[:100], y[:100]))
    _, pair_validation = _fit(sources.stream(DictSource(x, y), keys=("features", "target")),
                              epochs=1, validation_data=sources.ArraySource(x[:100], y[:100]))
    assert dict_validation.history["val_loss"] == pair_validation.history["val_loss"]
    assert _equal_leaves(reference, from_grain) == 0


def test_tfds_source_reads_the_named_keys(monkeypatch):
    import tensorflow_datasets as tfds

    x, y = _data()
    opened = {}

    def data_source(name, split, data_dir):
        opened.update(name=name, split=split, data_dir=data_dir)
        return DictSource(x, y)

    monkeypatch.setattr(tfds, "data_source", data_source)
    stream = sources.tfds_source("toy", "train[:50%]", data_dir="/data",
                                 keys=("features", "target"), steps_per_call=3)
    assert opened == {"name": "toy", "split": "train[:50%]", "data_dir": "/data"}
    assert stream.steps_per_call == 3
    inputs, labels = sources.read_examples(stream.source, np.array([4, 1]))
    assert np.array_equal(inputs, x[[4, 1]]) and np.array_equal(labels, y[[4, 1]])


def test_source_validation_matches_array_validation():
    x, y = _data()
    _, with_arrays = _fit(sources.ArraySource(x, y), epochs=1,
                          validation_data=(x[:300], y[:300]))
    _, with_source = _fit(sources.ArraySource(x, y), epochs=1,
                          validation_data=sources.ArraySource(x[:300], y[:300]))
    np.testing.assert_allclose(with_source.history["val_loss"], with_arrays.history["val_loss"],
                               rtol=1e-6)
    assert with_source.history["val_accuracy"] == with_arrays.history["val_accuracy"]


def test_non_finite_loss_in_a_stream_is_reported_with_its_step():
    x, y = _data()
    x[200] = np.inf
    with pytest.raises(NonFiniteLossError, match="step 7 of 16") as error:
        _fit(sources.stream(sources.ArraySource(x, y), steps_per_call=4), epochs=1,
             shuffle=False)
    assert int(error.value.state.step) == 200 // 32


def test_bad_sources_are_refused_naming_the_argument():
    import grain

    x, y = _data()
    with pytest.raises(ValueError, match=r"x has no labels \(y is None\)"):
        _fit(x)
    with pytest.raises(TypeError, match="random-access source"):
        _fit(iter([(x[0], y[0])]))
    with pytest.raises(ValueError, match="keys=.* not dicts"):
        sources.stream(sources.ArraySource(x, y), keys=("a", "b"))
    with pytest.raises(KeyError, match="no key 'image'"):
        _fit(DictSource(x, y))
    with pytest.raises(ValueError, match="steps_per_call must be a positive int"):
        sources.stream(sources.ArraySource(x, y), steps_per_call=0)
    with pytest.raises(ValueError, match="validation_split needs arrays"):
        _fit(DictSourcePairs(x, y), validation_split=0.1)
    loader = grain.DataLoader(data_source=[(x[i], y[i]) for i in range(4)],
                              sampler=grain.samplers.IndexSampler(4, num_epochs=1, shuffle=False,
                                                                  seed=0))
    with pytest.raises(TypeError, match="grain DataLoader"):
        _fit(loader)
    with pytest.raises(ValueError, match="save_every_steps must be a positive int"):
        ModelCheckpoint("unused", save_every_steps=0)


def test_a_block_part_that_is_all_padding_reads_nothing():
    x, y = _data(10)
    index = np.array([[8, 9, 0, 0]])
    mask = np.array([[True, True, False, False]])
    for source in (sources.ArraySource(x, y), DictSourcePairs(x, y)):
        bx, by, bm = sources.read_block(source, index, mask, slice(2, 4), rows=2)
        assert bx.shape == (2, 2, 8) and by.shape == (2, 2) and not bm.any()
        assert not bx.any()


class DictSourcePairs(DictSource):
    """``DictSource`` read as pairs, item by item (no batched ``read``)."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return item["features"], item["target"]


def test_calls_end_at_checkpoint_positions():
    stops = range(6, 28, 6)
    assert sources.chunks(28, 0, 4, stops) == [(0, 4), (4, 6), (6, 10), (10, 12), (12, 16),
                                               (16, 18), (18, 22), (22, 24), (24, 28)]
    assert sources.chunks(28, 18, 4, stops) == [(18, 22), (22, 24), (24, 28)]
    assert sources.chunks(10, 0, 4) == [(0, 4), (4, 8), (8, 10)]


def test_background_hands_on_errors_and_stops_when_closed():
    def broken():
        yield 1
        raise OSError("disk gone")

    items = sources.background(broken(), 2)
    assert next(items) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(items)
    endless = sources.background(iter(int, 1), 2)
    assert next(endless) == 0
    endless.close()


def _worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TESTS / "stream_resume_worker.py"), *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(worker: subprocess.Popen) -> str:
    out, err = worker.communicate(timeout=180)
    assert worker.returncode == 0, err[-3000:]
    return out


def _committed(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
        if directory.is_dir() else []


def test_stream_killed_mid_epoch_resumes_bit_identically(tmp_path):
    steps_per_epoch = 28  # 448 examples in batches of 16 (stream_resume_worker.py)
    full = _worker(str(tmp_path / "full"), str(tmp_path / "full.npz"))
    killed_dir, killed_out = tmp_path / "killed", tmp_path / "killed.npz"
    worker = _worker(str(killed_dir), str(killed_out), "--read-sleep", "0.2")
    try:
        deadline = time.monotonic() + 120
        # Wait for a checkpoint within the second epoch, then kill at once.
        while time.monotonic() < deadline and not any(
                n > steps_per_epoch and n % steps_per_epoch for n in _committed(killed_dir)):
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()
    at_kill = _committed(killed_dir)
    assert at_kill and at_kill[-1] % steps_per_epoch, f"not killed mid-epoch: {at_kill}"
    assert not killed_out.exists()

    log = _finish(_worker(str(killed_dir), str(killed_out), "--resume"))
    position = at_kill[-1] % steps_per_epoch
    assert f"resuming from {killed_dir / str(at_kill[-1])}" in log
    assert f"batch {position} of the epoch" in log
    # The resumed process ran and read only what was left of the 3 epochs (the shape
    # probe reads items, not batches): a silent restart would read all 84 batches.
    left = 3 * steps_per_epoch - at_kill[-1]
    assert (f"this process: steps {at_kill[-1]}..{3 * steps_per_epoch}, "
            f"{left * 16} examples read") in log, log
    full_history = json.loads(_finish(full).strip().splitlines()[-1])
    resumed_history = json.loads(log.strip().splitlines()[-1])
    reference, resumed = np.load(tmp_path / "full.npz"), np.load(killed_out)
    differing = [k for k in reference if not np.array_equal(reference[k], resumed[k])]
    print(f"\nkilled at step {at_kill[-1]} (batch {position} of epoch "
          f"{at_kill[-1] // steps_per_epoch + 1}); {len(reference) - len(differing)}/"
          f"{len(reference)} leaves of the final TrainState bit-identical")
    assert sorted(reference) == sorted(resumed) and differing == []
    # The epoch's logs continue from the sums saved with the position.
    assert resumed_history == full_history


def _write_dataset(directory: Path, megabytes: int) -> int:
    """Writes ``megabytes`` of uint8 32x32 images (and labels) as .npy files, in pieces.

    Plain writes, not a memmap, so this process stays small (``ru_maxrss``, which
    the worker falls back to without ``/proc``, includes the parent's size at fork).
    """
    n = megabytes * 1024
    directory.mkdir()
    rng = np.random.default_rng(0)
    piece = 16384
    pattern = rng.integers(0, 256, (piece, 32, 32), dtype=np.uint8)
    with open(directory / "x.npy", "wb") as file:
        np.lib.format.write_array_header_1_0(
            file, {"descr": "|u1", "fortran_order": False, "shape": (n, 32, 32)})
        for begin in range(0, n, piece):
            file.write((pattern[:min(piece, n - begin)] + np.uint8(begin // piece)).tobytes())
    np.save(directory / "y.npy", rng.integers(0, 10, n, dtype=np.int32))
    return n


def test_peak_memory_does_not_grow_with_the_dataset(tmp_path):
    sizes = (64, 512)  # MB of images; batches of 1 MB
    peaks = {}
    for megabytes in sizes:
        n = _write_dataset(tmp_path / str(megabytes), megabytes)
        done = subprocess.run([sys.executable, str(TESTS / "stream_memory_worker.py"),
                               str(tmp_path / str(megabytes))], env=ENV, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["steps"] == n // 1024
        peaks[megabytes] = report["peak_rss"] / 2**20
    growth = peaks[sizes[1]] - peaks[sizes[0]]
    print(f"\npeak RSS: {peaks[sizes[0]]:.0f} MB training on {sizes[0]} MB, "
          f"{peaks[sizes[1]]:.0f} MB on {sizes[1]} MB (+{growth:.0f} MB for "
          f"+{sizes[1] - sizes[0]} MB of data)")
    # Reading the whole file would add 448 MB; a block of 4 batches is 4 MB, and the
    # peak of one process varies by some 70 MB from run to run (compilation, allocator).
    assert abs(growth) < (sizes[1] - sizes[0]) / 4


def test_mid_epoch_checkpoint_needs_save_every_steps_to_resume(tmp_path):
    from fnlearn.checkpoint import save_checkpoint

    x, y = _data()
    state = fnlearn.init_state(_model(), optim.keras_adam(), (8,), seed=3)
    state = state._replace(step=state.step + 3)  # as if 3 batches of epoch 1 were done
    # The running sums of those 3 batches: the loss and accuracy totals with their counts.
    partial = {"epoch": 0, "batch": 3, "sums": [96.0, 48.0, 96.0, 96.0]}
    save_checkpoint(tmp_path, state, History(in_progress=partial), number=3)
    with pytest.raises(ValueError, match="saved within an epoch; resume it with"):
        _fit(x, y, resume=True, callbacks=[ModelCheckpoint(tmp_path, verbose=0)])
    checkpoint = ModelCheckpoint(tmp_path, save_every_steps=3, verbose=0)
    resumed, history = _fit(x, y, epochs=1, resume=True, callbacks=[checkpoint])
    assert int(resumed.step) == 16  # the 13 batches left of the epoch's 16
    assert history.in_progress is None and history.epoch == [0]


def test_stream_benchmark_reports_each_mode_against_in_memory(tmp_path):
    from experiments import stream_benchmark

    report = stream_benchmark.main(["--source", "sample", "--epochs", "1", "--reps", "1",
                                    "--out", str(tmp_path / "report.json")])
    assert report["examples"] == 6000
    assert set(report["speed_vs_in_memory"]) == {"stream (arrays)", "stream (memmap)"}
    assert all(ratio > 0 for ratio in report["speed_vs_in_memory"].values())
    assert json.loads((tmp_path / "report.json").read_text())["reps"] == 1

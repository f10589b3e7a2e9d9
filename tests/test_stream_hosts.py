"""Streamed fit over two processes on loopback: each reads only its half of every batch.

Each scenario runs in a fresh interpreter (this file as a script) with CPU devices
forced, as in ``test_distributed.py``. The source counts the examples it is asked
for, so the test sees which process read what.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZE = 64
EPOCHS = 2
# As in test_distributed.py: 4 devices against 1 sum the gradients in another order.
LOSS_RTOL = 1e-6
PARAM_ATOL = 5e-6
TIMEOUT_S = 120


def _dataset(n: int = 512) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8, 8)).astype(np.float32)
    projections = rng.normal(size=(64, 10)).astype(np.float32)
    return x, np.argmax(x.reshape(n, 64) @ projections, axis=1).astype(np.int32)


class CountingSource:
    """An ``ArraySource``-like source that records the positions of its batched reads.

    Training reads through ``read``; ``fit``'s shape check before training reads a
    few items through ``__getitem__``, which are not counted.
    """

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def read(self, positions):
        self.reads.extend(int(p) for p in positions)
        return np.asarray(self.x[positions]), np.asarray(self.y[positions])


def _fit(x, y, mesh):
    import fnlearn
    from fnlearn import nn, optim, sources

    model = nn.serial(nn.Flatten(), nn.Dense(32, "relu"), nn.Dropout(0.2),
                      nn.Dense(10, "softmax"))
    data = (x, y) if y is not None else (sources.stream(x, steps_per_call=3), None)
    return fnlearn.fit(model, *data, loss="sparse_categorical_crossentropy",
                       optimizer=optim.keras_adam(), epochs=EPOCHS, batch_size=BATCH_SIZE,
                       verbose=0, mesh=mesh, seed=0)


def _params(params) -> dict:
    import jax

    return {jax.tree_util.keystr(path): np.asarray(leaf).tolist()
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _worker(process_id: int, port: int, data_dir: str) -> dict:
    from fnlearn import distributed

    distributed.initialize(f"127.0.0.1:{port}", 2, process_id, initialization_timeout=60)
    import jax

    x = np.load(Path(data_dir, "x.npy"), mmap_mode="r")
    y = np.load(Path(data_dir, "y.npy"), mmap_mode="r")
    source = CountingSource(x, y)
    state, history = _fit(source, None, distributed.make_mesh())
    result = {"process_index": jax.process_index(), "devices": jax.device_count(),
              "reads": source.reads, "loss": history.history["loss"],
              "params": _params(state.params)}
    jax.distributed.shutdown()
    return result


def _reference() -> dict:
    x, y = _dataset()
    state, history = _fit(x, y, None)
    return {"loss": history.history["loss"], "params": _params(state.params)}


def _collectives() -> dict:
    """Collective ops in the compiled call of a streamed fit on 4 devices, by kind."""
    import re

    from fnlearn import distributed, sources
    from fnlearn.loop import compiled as programs

    compiled, calls = programs.train_rows, []

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return compiled(*args, **kwargs)

    programs.train_rows = recording
    x, y = _dataset()
    _fit(sources.ArraySource(x, y), None, distributed.make_mesh())
    args, kwargs = calls[0]
    hlo = compiled.lower(*args, **kwargs).compile().as_text()
    return {"block_spec": list(args[3][0].sharding.spec), **{
        op: len(re.findall(op + r"(?:-start)?\(", hlo))
        for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce")}}


def test_streamed_examples_stay_on_their_devices():
    report = _result(_start(["collectives"], 4))
    assert report["block_spec"] == [None, "data"]
    # The gradients are all-reduced; no example moves between devices.
    assert report["all-reduce"] >= 1
    assert report["all-gather"] == report["all-to-all"] == report["collective-permute"] == 0


def _env(device_count: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FNLEARN_", "JAX_COORDINATOR", "XLA_FLAGS"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}")
    return env


def _start(args: list[str], device_count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT, env=_env(device_count),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> dict:
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"worker did not finish in {TIMEOUT_S} s:\n{err[-3000:]}")
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_stream_their_halves_and_train_as_one(tmp_path):
    x, y = _dataset()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    port = str(_free_port())
    workers = [_start(["multi", str(pid), port, str(tmp_path)], 2) for pid in (0, 1)]
    reference_worker = _start(["single"], 1)
    try:
        results = [_result(worker) for worker in workers]
        reference = _result(reference_worker)
    finally:
        for worker in (*workers, reference_worker):
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    trained = []
    for pid, result in enumerate(results):
        assert result["process_index"] == pid and result["devices"] == 4
        reads = result["reads"]
        # Half of every batch, every epoch: 512 / 2 examples per epoch.
        assert len(reads) == EPOCHS * len(x) // 2
        trained.append(reads)
    # Together the two processes read every example exactly once per epoch.
    counts = np.bincount(np.concatenate(trained), minlength=len(x))
    assert counts.min() == counts.max() == EPOCHS
    assert results[0]["params"] == results[1]["params"]
    np.testing.assert_allclose(results[0]["loss"], reference["loss"], rtol=LOSS_RTOL)
    differences = {key: float(np.max(np.abs(np.asarray(results[0]["params"][key])
                                            - np.asarray(value))))
                   for key, value in reference["params"].items()}
    print(f"\ntwo processes x 2 devices, streamed, against one process on one device in "
          f"memory: losses {results[0]['loss']} vs {reference['loss']}, largest parameter "
          f"difference {max(differences.values()):.2g}")
    assert max(differences.values()) < PARAM_ATOL, differences


if __name__ == "__main__":
    if sys.argv[1] == "single":
        print(json.dumps(_reference()))
    elif sys.argv[1] == "collectives":
        print(json.dumps(_collectives()))
    else:
        print(json.dumps(_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))

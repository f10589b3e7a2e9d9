"""Sharded parameters (FSDP, tensor parallel, both) on 8 simulated CPU devices.

One worker process with 8 host devices trains the same model under each layout and
reports losses, parameters, the parameters' and optimizer state's bytes per device
(from the arrays' own shards) and the collectives of the compiled program. The tests
compare every layout with the 1-device run (docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5
# (layout, mesh shape, axis names, rule)
LAYOUTS = [
    ("one device", (1,), ("data",), None),
    ("fsdp 8x1", (8, 1), ("data", "model"), "fsdp"),
    ("tensor parallel 1x8", (1, 8), ("data", "model"), "tp"),
    ("fsdp + tensor parallel 4x2", (4, 2), ("data", "model"), "both"),
    ("fsdp + tensor parallel 2x4", (2, 4), ("data", "model"), "both"),
]


def _model():
    from fnlearn import nn

    return nn.serial(nn.Flatten(), nn.Dense(64, "relu"), nn.Dense(64, "relu"),
                     nn.Dense(16, "softmax"))


def _worker(checkpoints: str) -> dict:
    import jax

    import fnlearn as fl
    from fnlearn import sharding
    from fnlearn.loop import compiled as programs

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8, 8)).astype(np.float32)
    y = (x.reshape(512, -1) @ rng.normal(size=(64, 16))).argmax(-1).astype(np.int32)
    rules = {None: None, "fsdp": sharding.fsdp(min_size=256),
             "tp": sharding.tensor_parallel(),
             "both": sharding.combine(sharding.tensor_parallel(), sharding.fsdp(min_size=256))}
    calls = []
    original = programs.train_epochs

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    programs.train_epochs = recording
    report = {}
    for name, shape, axes, rule in LAYOUTS:
        count = int(np.prod(shape))
        mesh = fl.distributed.make_mesh(jax.devices()[:count], shape=shape, axis_names=axes)
        calls.clear()
        folder = os.path.join(checkpoints, name.replace(" ", "_"))
        state, history = fl.fit(
            _model(), x, y, loss="sparse_categorical_crossentropy", optimizer="adam",
            epochs=2, batch_size=64, seed=0, verbose=0, mesh=mesh, param_sharding=rules[rule],
            callbacks=[fl.ModelCheckpoint(folder, verbose=0)])
        args, kwargs = calls[0]  # one call per epoch (the checkpoint needs each)
        hlo = original.lower(*args, **kwargs).compile().as_text()
        per_device = sharding.bytes_per_device((state.params, state.opt_state))
        resumed, _ = fl.fit(
            _model(), x, y, loss="sparse_categorical_crossentropy", optimizer="adam",
            epochs=3, batch_size=64, seed=0, verbose=0, mesh=mesh, param_sharding=rules[rule],
            callbacks=[fl.ModelCheckpoint(folder, verbose=0)], resume=True)
        exported = fl.export_model(_model(), state.params, (8, 8), np.float32,
                                   os.path.join(folder, "model.fnx"))
        report[name] = {
            "export_difference": float(np.max(np.abs(
                fl.load_exported(exported)(x[:8]) - fl.predict(_model(), state.params, x[:8])))),
            "loss": history.history["loss"],
            "params": {sharding.path_name(p): np.asarray(leaf).tolist()
                       for p, leaf in jax.tree_util.tree_leaves_with_path(state.params)},
            "specs": {sharding.path_name(p): [a for a in leaf.sharding.spec]
                      for p, leaf in jax.tree_util.tree_leaves_with_path(state.params)},
            "resumed_specs": {sharding.path_name(p): [a for a in leaf.sharding.spec]
                              for p, leaf in jax.tree_util.tree_leaves_with_path(
                                  resumed.params)},
            "moment_specs": sorted({str(leaf.sharding.spec) for leaf in jax.tree.leaves(
                state.opt_state) if leaf.ndim == 2}),
            "bytes_per_device": sorted(per_device.values()),
            "total_bytes": sum(leaf.nbytes for leaf in jax.tree.leaves(
                (state.params, state.opt_state))),
            "collectives": {op: len(re.findall(op + r"(?:-start)?\(", hlo))
                            for op in ("all-gather", "reduce-scatter", "all-reduce")},
            "predict": np.asarray(fl.predict(_model(), state.params, x[:8])).tolist(),
        }
    return report


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_FLAGS")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run([sys.executable, __file__, str(tmp_path_factory.mktemp("ckpt"))],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_layout_trains_like_one_device(runs):
    reference = runs["one device"]
    for name, run in runs.items():
        np.testing.assert_allclose(run["loss"], reference["loss"], rtol=LOSS_RTOL, err_msg=name)
        worst = max(float(np.max(np.abs(np.asarray(run["params"][k]) -
                                        np.asarray(reference["params"][k]))))
                    for k in reference["params"])
        assert worst < PARAM_ATOL, (name, worst)
        np.testing.assert_allclose(run["predict"], reference["predict"], atol=1e-5)
        # An export of sharded parameters answers as predict does on them.
        assert run["export_difference"] < 1e-6, name


def _layers(run) -> list[str]:
    """The three Dense layers' names, in order."""
    names = {k.rpartition("/")[0] for k in run["specs"]}
    return sorted(names, key=lambda n: [int(p) if p.isdigit() else p
                                        for p in re.split(r"(\d+)", n)])


def test_fsdp_holds_an_eighth_of_the_kernels_per_device(runs):
    run = runs["fsdp 8x1"]
    first, second, last = _layers(run)
    assert run["specs"][f"{first}/kernel"] == ["data"]  # (64, 64): split along rows
    assert run["specs"][f"{last}/kernel"] == ["data"]  # (64, 16): its larger dimension
    # Every parameter of 256 scalars or more is split: the kernels, with Adam's two
    # moments; the biases and the optimizer's scalars are whole on every device.
    kernels = 3 * 4 * (64 * 64 + 64 * 64 + 64 * 16)
    assert max(run["bytes_per_device"]) == kernels // 8 + run["total_bytes"] - kernels
    assert max(run["bytes_per_device"]) < run["total_bytes"] / 7
    assert run["collectives"]["all-gather"] == 3  # each kernel gathered for its layer


def test_tensor_parallel_splits_dense_pairs_by_columns_then_rows(runs):
    run = runs["tensor parallel 1x8"]
    specs, (first, second, third) = run["specs"], _layers(run)
    assert specs[f"{first}/kernel"] == [None, "model"] and specs[f"{first}/bias"] == ["model"]
    assert specs[f"{second}/kernel"] == ["model"] and specs[f"{second}/bias"] == []
    assert specs[f"{third}/kernel"] == [None, "model"]  # a third Dense starts a new pair
    assert run["collectives"]["all-gather"] == 0  # Megatron's split needs no gathers


def test_two_dimensional_layouts_use_both_axes_and_keep_them(runs):
    for name in ("fsdp + tensor parallel 4x2", "fsdp + tensor parallel 2x4"):
        run = runs[name]
        first, second, _ = _layers(run)
        assert run["specs"][f"{first}/kernel"] == ["data", "model"], name
        assert run["specs"][f"{second}/kernel"] == ["model", "data"], name
        # The optimizer's moments follow their parameters, and a resumed run comes back
        # with the same layout.
        assert "P('data', 'model')" in run["moment_specs"], name
        assert run["resumed_specs"] == run["specs"], name


if __name__ == "__main__":
    print(json.dumps(_worker(sys.argv[1])))

"""Parity of the first three experiments with what the article's programs print.

Reference outputs (TensorFlow 2.21, PyTorch 2.13.0):
    tf_graph.py          Computational Graph Nodes: / tf.Tensor(2.0, shape=(), dtype=float32) ...
    torch_tensors.py     numpy array: [1 2 3]
    torch_autograd.py    tensor([0.6667, 1.3333, 2.0000])
    tf_gradient_tape.py  Gradients of x: [0.6666667 1.3333334 2.       ]
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import gradients, graph, tensors

REPO = Path(__file__).resolve().parent.parent


def test_graph_prints_a_b_c_with_values_shapes_and_dtypes(capsys, tmp_path):
    result = graph.main(["--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        "Computational Graph Nodes:",
        "a = 2.0  [input, shape=(), dtype=float32]",
        "b = 3.0  [input, shape=(), dtype=float32]",
        "c = add(a, b) = 5.0  [output, shape=(), dtype=float32]",
    ]
    assert [float(n.value) for n in result.nodes] == [2.0, 3.0, 5.0]
    assert [(n.shape, n.dtype) for n in result.nodes] == [((), "float32")] * 3
    assert (tmp_path / "graph.dot").read_text().startswith('digraph "c = a + b" {')
    # With or without Graphviz (matplotlib draws it then).
    assert (tmp_path / "graph.png").read_bytes()[:4] == b"\x89PNG"
    assert lines[4] == f"Graph picture: {tmp_path / 'graph.png'}"


def test_graph_shows_lower_level_views(capsys, tmp_path):
    graph.main(["--out", str(tmp_path), "--show", "jaxpr", "--show", "cost",
                "--show", "stablehlo", "--show", "hlo"])
    out = capsys.readouterr().out
    assert "{ lambda ; a:f32[] b:f32[]. let c:f32[] = add a b in (c,) }" in out
    assert "\nflops: 1\n" in out
    assert "stablehlo.add %arg0, %arg1 : tensor<f32>" in out
    assert "--- hlo ---\nHloModule jit_add" in out


def test_tensors_prints_the_numpy_array(capsys):
    array = tensors.main([])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["jax array: [1 2 3]", "numpy array: [1 2 3]"]
    np.testing.assert_array_equal(array, [1, 2, 3])
    if jax.default_backend() == "cpu":
        assert lines[2] == "numpy array shares memory with the jax array: yes; writeable: False"
        assert lines[3].startswith("devices: cpu:0")
    if importlib.util.find_spec("torch") is not None:
        assert "pytorch array: tensor([1, 2, 3], dtype=torch.int32)" in lines
        assert "back in jax via DLPack: [1 2 3] (zero-copy)" in lines


def test_gradients_print_both_reference_lines(capsys):
    grads, report = gradients.main([])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "grad (PyTorch style): [0.6667, 1.3333, 2.0000]",
        "Gradients of x: [0.6666667 1.3333334 2.       ]",
        lines[2],
    ]
    assert lines[2].startswith("gradient check passed: 3 elements agree")
    assert grads.dtype == np.float32
    np.testing.assert_array_equal(grads, np.array([2 / 3, 4 / 3, 2], np.float32))
    assert report.ok


@pytest.mark.parametrize("script", ["graph", "tensors", "gradients"])
def test_scripts_run_from_the_repo_root(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, f"experiments/{script}.py", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first = {"graph": "Computational Graph Nodes:", "tensors": "jax array: [1 2 3]",
             "gradients": "grad (PyTorch style): [0.6667, 1.3333, 2.0000]"}[script]
    assert done.stdout.splitlines()[0] == first


def test_help_exits_cleanly(capsys):
    for main in (graph.main, tensors.main, gradients.main):
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0
        assert "--out" in capsys.readouterr().out


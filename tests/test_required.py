"""CI's flags turn a missing framework, dataset or Graphviz into a failure, never a skip.

Three tests that need something from outside the package run in a child pytest where
torch cannot be imported, the MNIST folder is empty and ``dot`` is not on PATH: without
the flags they skip, with them (as ``.ci/run`` sets them) they fail, naming the flag.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDY = ["tests/test_tensors.py::test_from_torch_takes_torch_tensors_and_refuses_grad_tensors",
         "tests/test_data.py::test_full_mnist_loads_and_the_sample_is_its_head",
         "tests/test_graph.py::test_to_dot_parses_with_graphviz"]
FLAGS = ("FNLEARN_REQUIRE_PARITY", "FNLEARN_REQUIRE_DATA", "FNLEARN_REQUIRE_GRAPHVIZ")


def run_without_them(tmp_path: Path, flags: bool) -> subprocess.CompletedProcess:
    (tmp_path / "hide").mkdir(exist_ok=True)
    (tmp_path / "hide" / "torch.py").write_text("raise ImportError('hidden for this test')\n")
    (tmp_path / "empty").mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in FLAGS}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path / "hide"), str(ROOT)]),
               FNLEARN_DATA_DIR=str(tmp_path / "empty"), PATH=str(tmp_path / "empty"),
               JAX_PLATFORMS="cpu", **({flag: "1" for flag in FLAGS} if flags else {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p",
                           "no:cacheprovider", *NEEDY], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_without_the_flags_they_skip(tmp_path):
    done = run_without_them(tmp_path, flags=False)
    assert done.returncode == 0 and "3 skipped" in done.stdout, done.stdout + done.stderr


def test_with_ci_flags_they_fail_naming_the_flag(tmp_path):
    done = run_without_them(tmp_path, flags=True)
    # A fixture that fails reports its test as an error rather than a failure.
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1 and summary.startswith("2 failed, 1 error"), done.stdout
    for message in ("FNLEARN_REQUIRE_PARITY=1 but torch is not importable",
                    "FNLEARN_REQUIRE_DATA=1 but the full MNIST is not at",
                    "FNLEARN_REQUIRE_GRAPHVIZ=1 but Graphviz `dot` is not on PATH"):
        assert message in done.stdout, done.stdout

"""Runs every experiment in the article's order: ``python -m experiments [--out out]``.

MNIST uses the full data: from ``FNLEARN_DATA_DIR``, a prepared
tensorflow-datasets copy, or a download kept in ``~/.cache/fnlearn``
(``FNLEARN_DATASET_MIRROR`` names another mirror). Offline, it uses the sample
shipped with fnlearn and says so.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import time

# (module, reference program it reproduces)
EXPERIMENTS = [
    ("graph", "tf_graph.py"),
    ("tensors", "torch_tensors.py"),
    ("gradients", "torch_autograd.py, tf_gradient_tape.py"),
    ("regression", "torch_linear_regression.py"),
    ("mnist", "keras_mnist.py"),
    ("custom_loop", "the PyTorch training loop's shape, with fnlearn.train_step"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out"),
                        help="each experiment writes under OUT/<name> (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=[name for name, _ in EXPERIMENTS],
                        help="run only these experiments")
    args = parser.parse_args(argv)
    for name, reference in EXPERIMENTS:
        if args.only and name not in args.only:
            continue
        print(f"\n=== experiments/{name}.py (reference: {reference}) ===", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"experiments.{name}")
        module.main(["--out", str(args.out / name)])
        print(f"=== {name} done in {time.perf_counter() - started:.1f} s ===", flush=True)


if __name__ == "__main__":
    main()

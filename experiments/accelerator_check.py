"""Accelerator check: the test subset and the article's MNIST recipe on whatever JAX sees.

Runs a quick subset of the test suite with pytest, then trains Normalize ->
Flatten -> Dense 128 relu -> Dropout 0.2 -> Dense 10 softmax with Keras's Adam,
5 epochs of batch 32, validating on the test set, and reports the device kind
and count, the fit time (the first epoch includes compilation) and the test
accuracy. With ``--mesh`` the batch is split over every visible device.

    python experiments/accelerator_check.py [--data-dir DIR] [--mesh] [--out check.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import time

import jax

import fnlearn as fl
from fnlearn import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
# Quick tests that exercise the layers, losses, optimizers and the compiled fit on the
# default backend (the distributed tests force CPU in their own subprocesses).
DEFAULT_TESTS = ("tests/test_nn.py", "tests/test_losses.py", "tests/test_optim.py",
                 "tests/test_train.py")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", nargs="*", default=list(DEFAULT_TESTS),
                        help="test files for pytest; none to skip (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four MNIST IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--source", choices=("auto", "idx", "tfds", "sample"), default="auto",
                        help="where MNIST comes from (default: %(default)s; see docs/data.md)")
    parser.add_argument("--mesh", action="store_true",
                        help="data-parallel over every visible device (batch split evenly)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="write the figures to this JSON file")
    return parser.parse_args(argv)


def run_tests(files: list[str]) -> dict:
    """Runs pytest on ``files`` in a fresh process; returns its exit code and summary line."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not slow and not parity",
                           *files], cwd=REPO, capture_output=True, text=True, timeout=1800)
    lines = done.stdout.strip().splitlines()
    summary = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)),
                   lines[-1] if lines else done.stderr.strip()[-300:])
    return {"files": files, "returncode": done.returncode, "summary": summary.strip("= "),
            "seconds": round(time.perf_counter() - started, 1)}


def train_mnist(args: argparse.Namespace) -> dict:
    """Trains the article's recipe once; returns the timings and test accuracy."""
    dataset = fl.data.load_mnist(args.source, args.data_dir)
    (x, y), (x_test, y_test) = dataset
    model = fl.models.article_mlp()
    mesh = distributed.make_mesh() if args.mesh else None
    started = time.perf_counter()
    # verbose=2 runs one call per epoch, so the first epoch's time holds the compilation
    # and the others show the steady state.
    state, history = fl.fit(model, x, y, loss="sparse_categorical_crossentropy",
                            optimizer=fl.optim.keras_adam(), metrics=["accuracy"],
                            epochs=args.epochs, batch_size=args.batch_size,
                            validation_data=(x_test, y_test), verbose=2, mesh=mesh)
    fit_s = time.perf_counter() - started
    test = fl.evaluate(model, state.params, x_test, y_test,
                       loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return {"data_source": dataset.source, "train_examples": len(x), "test_examples": len(x_test),
            "epochs": args.epochs, "batch_size": args.batch_size, "mesh_devices":
            mesh.devices.size if mesh is not None else None,
            "fit_s": round(fit_s, 3),
            "epoch_s": [round(s, 3) for s in history.epoch_seconds],
            "test_loss": test["loss"], "test_accuracy": test["accuracy"]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    devices = jax.devices()
    report = {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
              "device_count": len(devices), "jax_version": jax.__version__}
    print(f"{report['device_count']} x {report['device_kind']} ({report['backend']}), "
          f"jax {report['jax_version']}", flush=True)
    if args.tests:
        report["tests"] = run_tests(args.tests)
        print(f"tests: {report['tests']['summary']}", flush=True)
    report["mnist"] = train_mnist(args)
    mnist = report["mnist"]
    print(f"MNIST ({mnist['data_source']}, {mnist['train_examples']} examples): "
          f"fit {mnist['fit_s']:.2f} s, first epoch {mnist['epoch_s'][0]:.2f} s, "
          f"test accuracy {mnist['test_accuracy']:.4f}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

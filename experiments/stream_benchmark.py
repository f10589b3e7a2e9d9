"""Streaming versus in-memory training speed on MNIST: the article's model, ``fit`` three ways.

``in-memory`` copies the arrays to the device once (today's path); ``stream (arrays)``
streams the same arrays from the host in blocks of ``--steps-per-call`` batches;
``stream (memmap)`` streams them from ``.npy`` files on disk, read with ``pread``.
Each mode is compiled by a first, untimed fit; then repetitions alternate between
the modes (rep 1: A B C, rep 2: A B C, ...), and the report gives each mode's median
fit time and the ratio of in-memory time to streamed time, rep by rep, before the
median (1.0: as fast as in memory).

    python experiments/stream_benchmark.py [--data-dir DATA] [--epochs 2] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import fnlearn
from fnlearn import sources
from fnlearn.data import load_mnist


def _fit(model, x, y, epochs: int, batch_size: int) -> float:
    started = time.perf_counter()
    state, _ = fnlearn.fit(model, x, y, loss="sparse_categorical_crossentropy",
                           optimizer=fnlearn.optim.keras_adam(), metrics=["accuracy"],
                           epochs=epochs, batch_size=batch_size, seed=0, verbose=0)
    state.params  # noqa: B018 - fit returns after its last call has finished
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    """Runs the comparison and prints a JSON report (also written to ``--out`` if given)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="MNIST IDX folder (FNLEARN_DATA_DIR)")
    parser.add_argument("--source", default="auto", help="load_mnist source")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps-per-call", type=int, default=sources.STEPS_PER_CALL)
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    (x, y), _ = load_mnist(args.source, args.data_dir)
    model = fnlearn.models.article_mlp()
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder, "x.npy"), x)
        np.save(Path(folder, "y.npy"), y)
        x_disk = np.load(Path(folder, "x.npy"), mmap_mode="r")
        y_disk = np.load(Path(folder, "y.npy"), mmap_mode="r")
        modes = {
            "in-memory": (x, y),
            "stream (arrays)": (sources.stream(sources.ArraySource(x, y),
                                               steps_per_call=args.steps_per_call), None),
            "stream (memmap)": (sources.stream(sources.ArraySource(x_disk, y_disk),
                                               steps_per_call=args.steps_per_call), None),
        }
        for data in modes.values():  # compile every mode once, untimed
            _fit(model, *data, 1, args.batch_size)
        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.reps):
            for name, data in modes.items():
                times[name].append(_fit(model, *data, args.epochs, args.batch_size))
    baseline = times["in-memory"]
    report = {
        "examples": len(x), "epochs": args.epochs, "batch_size": args.batch_size,
        "steps_per_call": args.steps_per_call, "reps": args.reps,
        "fit_s": {name: statistics.median(t) for name, t in times.items()},
        "speed_vs_in_memory": {name: statistics.median(b / s for b, s in zip(baseline, t))
                               for name, t in times.items() if name != "in-memory"},
        "all_fit_s": times,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

"""What the training loop costs: the article's MLP through fit, with and without host stops.

Each configuration runs in its own fresh process, repetitions alternate between them,
and the report gives the median seconds of a warm ``fit`` (its programs compiled by an
untimed first call) with the min-max spread:

- ``plain``: ``fit(verbose=0)``, no callbacks: whole epochs in one call;
- ``batch hook /100``: a callback with ``batch_frequency=100`` that does nothing: the
  epoch runs in calls of 100 batches, the host stopping after each;
- ``epoch hook``: a callback with an ``on_epoch_end`` that does nothing: one call per epoch;
- ``verbose=1``: the progress bar, every 50 batches.

``--against DIR`` also runs ``plain`` with the fnlearn found in DIR (another checkout):
the same recipe, before and after a change, side by side in one run.

    python experiments/loop_bench.py --data-dir DATA [--reps 5] [--epochs 5] [--against DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("plain", "batch hook /100", "epoch hook", "verbose=1")

WORKER = r"""
import json, sys, time
import numpy as np
import fnlearn as fl

config, epochs, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
(x, y), (xt, yt) = fl.data.load_mnist(data_dir=data_dir)
callbacks, verbose = [], 0
if config != "plain" and not hasattr(fl, "Callback"):
    raise SystemExit("this fnlearn has no Callback protocol")
if config == "batch hook /100":
    class Nothing(fl.Callback):
        batch_frequency = 100
        def on_train_batch_end(self, batch, state, logs, history):
            pass
    callbacks = [Nothing()]
elif config == "epoch hook":
    class Nothing(fl.Callback):
        def on_epoch_end(self, epoch, state, logs, history):
            return False
    callbacks = [Nothing()]
elif config == "verbose=1":
    verbose = 1
kwargs = dict(loss="sparse_categorical_crossentropy", optimizer=fl.optim.keras_adam(),
              metrics=["accuracy"], batch_size=32, verbose=verbose, callbacks=callbacks)
model = fl.models.article_mlp()
fl.fit(model, x, y, epochs=1, **kwargs)  # compiles every program this configuration runs
start = time.perf_counter()
state, history = fl.fit(model, x, y, epochs=epochs, **kwargs)
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"fit_s": seconds, "loss": history.history["loss"][-1]}))
"""


def run(config: str, epochs: int, data_dir: str, fnlearn_dir: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(fnlearn_dir), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", WORKER, config, str(epochs), data_dir],
                          env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{config} ({fnlearn_dir}) failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])["fit_s"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--against", type=Path, default=None,
                        help="another checkout whose fnlearn runs the plain configuration")
    args = parser.parse_args(argv)
    runs = [(config, REPO) for config in args.configs.split(",")]
    if args.against is not None:
        runs.append(("plain", args.against.resolve()))
    times: dict[str, list[float]] = {}
    for rep in range(args.reps):
        for config, where in runs:
            label = config if where == REPO else f"{config} ({where.name})"
            times.setdefault(label, []).append(run(config, args.epochs, args.data_dir, where))
        print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    base = times["plain"]
    print(f"| configuration | warm fit s, {args.epochs} epochs (median, min-max) | x plain |")
    print("| --- | --- | --- |")
    for label, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, base))
        print(f"| {label} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
              f" | {ratio:.3f} |")
    return times


if __name__ == "__main__":
    main()

"""What compiling a training run costs: fnlearn's LLVM -O1 against XLA's default -O3.

For each recipe (the article MLP, the Keras convnet, the PyTorch recipe's Net), each
level runs in its own fresh process with the persistent compilation cache off, the
levels alternating, and the process reports:

- ``init``: seconds XLA spent compiling ``init_state``'s program;
- ``train``: seconds compiling the training program (the largest compilation of the run);
- ``all``: seconds of every compilation in ``fit`` and the one ``evaluate`` after it;
- ``init CPU`` and ``CPU to evaluated``: CPU seconds of the process (all threads) for
  ``init_state``, and from there through the first epoch and ``evaluate``: mostly
  compilation, and less sensitive than wall time to other work on the machine;
- ``epoch``: seconds of one more epoch with everything compiled (the code's speed);
- ``loss``: the last epoch's loss, printed in full: equal bits give equal digits.

``-O1`` is what fnlearn's programs get on CPU (``fnlearn/compiler.py``; no ``XLA_FLAGS``);
``-O3``, XLA's default, is set through ``XLA_FLAGS=--xla_backend_optimization_level=3``,
which fnlearn then leaves in place.

    python experiments/compile_bench.py --data-dir DATA [--reps 3] [--train-size 6000]

Without ``--data-dir`` (or ``FNLEARN_DATA_DIR``) it runs on fnlearn's shipped MNIST sample.
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
RECIPES = ("mlp", "keras", "torch")
LEVELS = ("-O3 (XLA default)", "-O1 (fnlearn)")

WORKER = r"""
import json, sys, time
import numpy as np
import jax
from jax import monitoring

compiles = []
monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **_: compiles.append(seconds)
    if name.endswith("backend_compile_duration") else None)
import fnlearn as fl

recipe, size, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
(x, y), (xt, yt) = (fl.data.load_mnist(data_dir=data_dir) if data_dir
                    else fl.data.load_mnist(source="sample"))
x, y = x[:size], y[:size]
if recipe == "mlp":
    model, batch = fl.models.article_mlp(), 32
    kwargs = dict(loss="sparse_categorical_crossentropy", optimizer=fl.optim.keras_adam())
elif recipe == "keras":
    model, batch, x, xt = fl.models.keras_convnet(), 128, x[..., None], xt[..., None]
    kwargs = dict(loss="sparse_categorical_crossentropy", optimizer=fl.optim.keras_adam())
else:
    model, batch, x, xt = fl.models.torch_mnist_net(), 64, x[..., None], xt[..., None]
    kwargs = dict(loss="nll_loss", optimizer=fl.optim.torch_adadelta(
        schedule=fl.optim.step_lr(1.0, step_size=1, gamma=0.7)))
kwargs.update(metrics=["accuracy"], batch_size=batch, verbose=0, seed=0)
cpu = time.process_time()
state = fl.init_state(model, kwargs["optimizer"], x.shape[1:], seed=0)
init, first, init_cpu = sum(compiles), len(compiles), time.process_time() - cpu
state, _ = fl.fit(model, x, y, epochs=1, state=state, **kwargs)
fl.evaluate(model, state.params, xt, yt, loss=kwargs["loss"])
cpu = time.process_time() - cpu
train, every = max(compiles[first:]), sum(compiles)
start = time.perf_counter()
state, history = fl.fit(model, x, y, epochs=2, state=state, **kwargs)
jax.block_until_ready(state.params)
print(json.dumps({"init": init, "train": train, "all": every, "init_cpu": init_cpu, "cpu": cpu,
                  "epoch": time.perf_counter() - start,
                  "loss": repr(float(history.history["loss"][-1]))}))
"""


def run_once(recipe: str, level: str, size: int, data_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(FNLEARN_COMPILATION_CACHE="0", PYTHONPATH=str(REPO))
    if level.startswith("-O3"):
        env["XLA_FLAGS"] = "--xla_backend_optimization_level=3"
    done = subprocess.run([sys.executable, "-c", WORKER, recipe, str(size), data_dir],
                          env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{recipe} {level} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=6000,
                        help="training examples (default: %(default)s)")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args(argv)
    recipes = args.recipes.split(",")
    runs = {(r, level): [] for r in recipes for level in LEVELS}
    for _ in range(args.reps):
        for recipe in recipes:
            for level in LEVELS:
                runs[recipe, level].append(run_once(recipe, level, args.train_size,
                                                    str(args.data_dir or "")))
    print("| recipe | level | init compile s | training compile s | all compiles s | "
          "init CPU s | CPU s to evaluated | epoch s | last loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (recipe, level), results in runs.items():
        keys = ("init", "train", "all", "init_cpu", "cpu", "epoch")
        cells = [summary([r[k] for r in results]) for k in keys]
        losses = sorted({r["loss"] for r in results})
        print(f"| {recipe} | {level} | " + " | ".join(cells) + f" | {', '.join(losses)} |")
    return {f"{r} {level}": v for (r, level), v in runs.items()}


if __name__ == "__main__":
    main()

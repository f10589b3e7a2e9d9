"""How a step keeps or drops its update: ``jnp.where`` on every leaf, or ``lax.cond``.

A step whose loss is not finite must change nothing (``fnlearn.step.guarded``). The
update can be selected with a ``lax.cond`` carrying the whole state, or computed and
then chosen leaf by leaf with ``jnp.where`` (as ``optax.apply_if_finite`` does). This
times one epoch of the article's MLP on MNIST compiled each way, alternating the two in
one process, and prints the medians with their spreads and the ratio.

    python experiments/select_bench.py --data-dir DATA [--reps 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

import fnlearn as fl
from fnlearn.step import epoch_batches, step_key


def epoch_program(step, select: str, batch_size: int):
    """One epoch of ``step`` in a scan, the update kept by ``select`` ("where" or "cond")."""

    def run(state, x, y):
        index, mask = epoch_batches(state, x.shape[0], batch_size)

        def body(state, rows):
            idx, m = rows
            new, _, finite = step.train(state, (x[idx], y[idx]), m, step_key(state))
            if select == "where":
                state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
            else:
                state = jax.lax.cond(finite, lambda: new, lambda: state)
            return state, None

        return jax.lax.scan(body, state, (index, mask))[0]

    return jax.jit(run)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    (x, y), _ = fl.data.load_mnist(data_dir=args.data_dir)
    x, y = jax.device_put(x), jax.device_put(y)
    model, optimizer = fl.models.article_mlp(), fl.optim.keras_adam()
    step = fl.step.supervised(model, "sparse_categorical_crossentropy", optimizer)
    state = fl.init_state(model, optimizer, (28, 28))
    programs = {name: epoch_program(step, name, args.batch_size) for name in ("where", "cond")}
    for program in programs.values():
        jax.block_until_ready(program(state, x, y))
    times = {name: [] for name in programs}
    for _ in range(args.reps):
        for name, program in programs.items():
            started = time.perf_counter()
            jax.block_until_ready(program(state, x, y))
            times[name].append(time.perf_counter() - started)
    ratio = statistics.median(c / w for w, c in zip(times["where"], times["cond"]))
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} s an epoch "
              f"({min(values):.3f}-{max(values):.3f})")
    print(f"cond / where: {ratio:.3f} (median of the per-repetition ratios)")
    return {"times": times, "ratio": ratio}


if __name__ == "__main__":
    main()

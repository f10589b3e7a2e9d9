"""Saves a large-ish state as fast as it can until killed; the kill-mid-save test runs it.

Usage: python tests/save_worker.py CHECKPOINT_DIR. Continues after the latest checkpoint
there. Every leaf of the checkpoint of epoch ``e`` is filled with ``e``, so a reader
can tell a torn checkpoint from a whole one.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp

from fnlearn.checkpoint import latest_checkpoint, save_checkpoint
from fnlearn.state import History, TrainState

# 4M float32 (16 MB) in the largest leaf: a save takes long enough to be killed during.
BIG = 4_000_000


def state_of(epoch: int) -> TrainState:
    """The state saved for ``epoch``: every value equals ``epoch``."""
    params = {"dense": {"kernel": jnp.full((BIG,), epoch, jnp.float32),
                        "bias": jnp.full((1000,), epoch, jnp.float32)}}
    return TrainState(params, (jnp.full((1000,), epoch, jnp.float32),),
                      {"count": jnp.full((10,), epoch, jnp.float32)}, jnp.int32(epoch),
                      jnp.int32(epoch), jnp.full((2,), epoch, jnp.uint32))


def main() -> None:
    directory = sys.argv[1]
    latest = latest_checkpoint(directory)
    epoch = int(latest.name) + 1 if latest is not None else 1
    while True:
        history = History({"loss": [float(epoch)]}, [epoch], [0.0])
        save_checkpoint(directory, state_of(epoch), history, keep=2)
        print(f"saved {epoch}", flush=True)
        epoch += 1


if __name__ == "__main__":
    main()

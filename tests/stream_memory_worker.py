"""Trains one epoch streamed from two .npy memmaps; prints the process's peak RSS in bytes.

Usage: python tests/stream_memory_worker.py DATA_DIR. ``DATA_DIR`` holds ``x.npy``
(uint8, ``(n, 32, 32)``) and ``y.npy`` (int32, ``(n,)``).
"""

from __future__ import annotations

import json
import re
import resource
import sys
from pathlib import Path

import numpy as np

import fnlearn
from fnlearn import nn, sources


def main() -> None:
    directory = Path(sys.argv[1])
    x = np.load(directory / "x.npy", mmap_mode="r")
    y = np.load(directory / "y.npy", mmap_mode="r")
    model = nn.serial(nn.Flatten(), nn.Dense(10, "softmax"))
    state, _ = fnlearn.fit(model, sources.stream(sources.ArraySource(x, y), steps_per_call=4),
                           None, loss="sparse_categorical_crossentropy", optimizer="sgd",
                           epochs=1, batch_size=1024, verbose=0)
    print(json.dumps({"examples": len(x), "steps": int(state.step), "peak_rss": peak_rss()}))


def peak_rss() -> int:
    """This process's peak resident size in bytes since it started its program.

    ``VmHWM`` where there is ``/proc``: ``ru_maxrss`` counts the parent's resident
    size at ``fork`` too, so under a large test runner it would hide this process's.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


if __name__ == "__main__":
    main()

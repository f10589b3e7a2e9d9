"""The one epoch loop: both drivers (arrays in memory, a streamed source) run through it.

An epoch is a sequence of compiled calls, each running a block of batches
(``fnlearn.loop.compiled.train_rows``); the drivers differ only in where a call's
batches come from (``Feed``). The host stops between calls only where something
needs it: the progress bar every ``progress_every`` batches, batch-level callbacks
at their frequencies, the end of the epoch. Between stops, the next call is queued
before the previous one's results are read, so the device never waits for the host.
When nothing needs the host during or between epochs, an in-memory run takes the
fast road instead: up to ``EPOCHS_PER_CALL`` whole epochs in one call.

One stop rule: a callback's ``on_epoch_end`` returning True ends training after
that epoch; a non-finite loss raises ``NonFiniteLossError``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import numpy as np

from fnlearn import optim
from fnlearn.loop.hooks import Hooks
from fnlearn.loop.progress import Progress, to_floats
from fnlearn.state import History, TrainState


class Feed(Protocol):
    """Where an epoch's batches come from.

    ``steps`` batches make an epoch; ``calls(state, done, stops)`` yields, for the
    batches after ``done``, ``(begin, end, dispatch)`` where ``dispatch(state, sums,
    stopped)`` queues the compiled call for batches ``begin..end`` and returns
    ``(state, sums, stopped, logs, nonfinite_row)`` as device values (the call that
    ends the epoch counts it in ``state.epoch``); calls end at every batch in
    ``stops``. ``zero_sums(state)`` are the epoch's starting sums; ``validate(state)``
    the validation logs (``val_``-prefixed host floats, or {}).
    ``run_epochs(state, count)`` is the fast road: ``count`` (at most
    ``epochs_per_call``, 0 where the driver has no fast road) whole epochs in one call.
    """

    steps: int
    epochs_per_call: int

    def run_epochs(self, state, count: int) -> tuple[Any, dict]: ...

    def calls(self, state, done: int, ends: set[int]) -> Iterator[tuple[int, int, Callable]]: ...

    def zero_sums(self, state) -> Any: ...

    def validate(self, state) -> dict[str, float]: ...


@dataclass
class Run:
    """One ``fit`` call's loop: the feed, the callbacks, the output, the host stops."""

    feed: Feed
    hooks: Hooks
    progress: Progress
    progress_every: int
    sums_codec: tuple[Callable, Callable]  # sums -> plain JSON list, and back
    names: list[str]  # the epoch logs' names, in the order they are shown

    def ordered(self, logs: dict[str, float]) -> dict[str, float]:
        """``logs`` in ``names`` order (compiled programs hand dicts back sorted)."""
        return {**{n: logs[n] for n in self.names if n in logs},
                **{n: v for n, v in logs.items() if n not in self.names}}


def _stops(run: Run) -> set[int]:
    """The batches of an epoch where the host must look: the bar, batch callbacks, the end."""
    steps = run.feed.steps
    stops = {steps}
    period = run.hooks.batch_period
    if period:
        stops.update(range(period, steps + 1, period))
    if run.progress.verbose == 1:
        stops.update(range(run.progress_every, steps, run.progress_every))
    return stops


def fast_road(run: Run) -> bool:
    """Whether whole epochs can run as one call: nothing needs the host inside an epoch."""
    return (run.feed.epochs_per_call > 0 and run.progress.verbose != 1
            and run.hooks.batch_period is None)


def train(run: Run, state: TrainState, history: History, epochs: int) -> TrainState:
    """Trains from ``state.epoch`` to ``epochs``; returns the last state."""
    epoch = int(state.epoch)
    stops = _stops(run)
    while epoch < epochs:
        state = run.hooks.epoch_begin(epoch, state)
        if fast_road(run):
            per_epoch = run.progress.verbose == 2 or run.hooks.per_epoch
            count = 1 if per_epoch else min(epochs - epoch, run.feed.epochs_per_call)
            run.progress.epoch_begins(epoch, epochs)
            started = time.perf_counter()
            state, stacked = run.feed.run_epochs(state, count)
            seconds = (time.perf_counter() - started) / count
            results = []
            for i in range(count):
                bad = int(stacked["nonfinite_step"][i])
                if bad >= 0:
                    raise run.progress.nonfinite(epoch + i, bad, state)
                results.append((run.ordered({k: float(v[i]) for k, v in stacked.items()
                                             if k != "nonfinite_step"}), run.feed.steps))
        else:
            state, logs, seconds, ran = _one_epoch(run, state, history, epoch, epochs, stops)
            results = [(logs, ran)]
        for logs, ran in results:
            history.in_progress = None
            history.append(epoch, logs, seconds)
            run.progress.epoch_ends(logs, seconds, ran)
            stop = run.hooks.epoch_end(epoch, state, logs, history)
            epoch += 1
            if stop:
                return state
    return state


def _one_epoch(run: Run, state, history: History, epoch: int, epochs: int, stops: set[int]):
    """Runs one epoch in calls; returns ``(state, logs, seconds, batches run)``."""
    feed, progress = run.feed, run.progress
    done, sums = 0, None
    partial = history.in_progress
    if partial and partial.get("epoch") == epoch:
        done, sums = int(partial["batch"]), run.sums_codec[1](partial["sums"])
    if sums is None:
        sums = feed.zero_sums(state)
    progress.epoch_begins(epoch, epochs, done)
    started = time.perf_counter()
    stopped = np.bool_(False)
    pending = []  # calls queued whose results the host has not read

    def settle(state):
        for begin, end, logs, bad in jax.device_get(pending):
            if bad >= 0:
                raise progress.nonfinite(epoch, begin + int(bad), state)
            progress.batches_done(end, run.ordered(to_floats(logs)))
        pending.clear()

    logs = {}
    for begin, end, dispatch in feed.calls(state, done, stops):
        state, sums, stopped, logs, bad = dispatch(state, sums, stopped)
        pending.append((begin, end, logs, bad))
        if end in stops:
            settle(state)
            if run.hooks.batch_period and end % run.hooks.batch_period == 0:
                history.in_progress = None if end == feed.steps else {
                    "epoch": epoch, "batch": end,
                    "sums": run.sums_codec[0](jax.device_get(sums))}
                run.hooks.batch_end(end, state, run.ordered(to_floats(jax.device_get(logs))),
                                    history)
        elif len(pending) > 1:
            # Reading the previous call's results waits for it, not for the one just queued.
            last = pending.pop()
            settle(state)
            pending.append(last)
    settle(state)
    logs = {**to_floats(jax.device_get(logs)), **feed.validate(state)}
    learning_rate = optim.epoch_learning_rate(state.opt_state)
    if learning_rate is not None:
        logs["learning_rate"] = float(learning_rate)
    return state, run.ordered(logs), time.perf_counter() - started, feed.steps - done


def sums_codec(zero_sums) -> tuple[Callable, Callable]:
    """Sums to plain floats (exact for float32) and back, in the structure of ``zero_sums``."""
    treedef = jax.tree.structure(zero_sums)
    dtypes = [np.asarray(leaf).dtype for leaf in jax.tree.leaves(zero_sums)]

    def to_plain(sums) -> list:
        return [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(sums)]

    def from_plain(plain) -> Any:
        leaves = [np.asarray(value, dtype) for value, dtype in zip(plain, dtypes)]
        return jax.tree.unflatten(treedef, leaves)

    return to_plain, from_plain


def per_call_rows(steps: int, stops: set[int]) -> int:
    """Rows of equal calls that end at every stop before the epoch's end (the last padded)."""
    inner = [s for s in stops if s < steps]
    return math.gcd(*inner) if inner else steps

"""The ``Callback`` protocol, Keras's hooks with explicit state, and the runner ``fit`` uses.

A callback subclasses ``Callback`` and overrides the hooks it needs; the others are
no-ops, so the loop calls every hook without asking what a callback has:

* ``on_train_begin(state, history, resume)``: may return ``(state, history)`` to start
  from (a restored run);
* ``on_epoch_begin(epoch, state)``: may return a new state (a learning-rate change);
* ``on_train_batch_end(batch, state, logs, history)``: after every ``batch_frequency``
  batches of an epoch (the epoch's last batch too, when it is a multiple), with the
  epoch's running means so far;
* ``on_epoch_end(epoch, state, logs, history)``: return True to stop training;
* ``on_train_end(state, history)``: may return the state ``fit`` returns instead.

Epochs are numbered from 0, batches within an epoch from 1 (batches done). A
callback that restores runs (``ModelCheckpoint``) sets ``restores_runs = True``:
``fit(resume=True)`` needs one. Callbacks run in list order, each seeing what the
previous one returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fnlearn.state import History, TrainState


class Callback:
    """Base class of ``fit`` callbacks: every hook is a no-op until overridden.

    Attributes:
      batch_frequency: call ``on_train_batch_end`` every this many batches of an
        epoch; None never calls it. The epoch then runs in compiled calls that end at
        these batches, so only a callback that needs them should set it.
      restores_runs: whether ``on_train_begin`` restores a run when ``resume`` is True.
      params: set by ``fit`` before the first epoch (Keras's ``Callback.params``):
        ``epochs``, ``steps`` (batches per epoch), ``verbose`` and ``names`` (the
        epoch logs' names, in order).

    A callback that keeps a state (or its params) past the hook must copy it: the
    next compiled call reuses the state's buffers (``fnlearn.loop.compiled``).
    """

    batch_frequency: int | None = None
    restores_runs: bool = False
    params: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance by ``Hooks.set_params``

    def on_train_begin(self, state: TrainState, history: History,
                       resume: bool) -> tuple[TrainState, History] | None:
        """Before training; return ``(state, history)`` to start from them instead."""
        return None

    def on_epoch_begin(self, epoch: int, state: TrainState) -> TrainState | None:
        """Before epoch ``epoch`` (0-based); return a state to train it from instead."""
        return None

    def on_train_batch_end(self, batch: int, state: TrainState, logs: dict[str, float],
                           history: History) -> None:
        """After ``batch`` batches of the epoch, with the epoch's running means in ``logs``."""

    def on_epoch_end(self, epoch: int, state: TrainState, logs: dict[str, float],
                     history: History) -> bool:
        """After epoch ``epoch``; return True to stop training."""
        return False

    def on_train_end(self, state: TrainState, history: History) -> TrainState | None:
        """After training; return a state for ``fit`` to return instead (best weights)."""
        return None


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class Hooks:
    """The callbacks of one ``fit`` call, run in list order."""

    def __init__(self, callbacks: Sequence[Callback]):
        callbacks = list(callbacks)
        for i, callback in enumerate(callbacks):
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks[{i}] is a {type(callback).__name__}, not a "
                                "fnlearn.Callback; subclass fnlearn.Callback and override "
                                "the hooks you need")
            frequency = callback.batch_frequency
            if frequency is not None and (isinstance(frequency, bool)
                                          or not isinstance(frequency, int) or frequency < 1):
                raise ValueError(f"callbacks[{i}].batch_frequency must be a positive int or "
                                 f"None, got {frequency!r}")
        self.callbacks = callbacks

    @property
    def per_epoch(self) -> bool:
        """Whether any callback needs the host between epochs."""
        return any(_overrides(c, "on_epoch_end") or _overrides(c, "on_epoch_begin")
                   for c in self.callbacks)

    @property
    def batch_period(self) -> int | None:
        """Batches between host stops that every batch-level callback's frequency divides."""
        frequencies = [c.batch_frequency for c in self.callbacks if c.batch_frequency]
        return math.gcd(*frequencies) if frequencies else None

    def set_params(self, **params) -> None:
        for callback in self.callbacks:
            callback.params = dict(params)

    def train_begin(self, state: TrainState, history: History, resume: bool):
        if resume and not any(c.restores_runs for c in self.callbacks):
            raise ValueError("resume=True needs a callback that restores a run, e.g. "
                             "callbacks=[fnlearn.ModelCheckpoint(directory)]")
        for callback in self.callbacks:
            restored = callback.on_train_begin(state, history, resume)
            if restored is not None:
                state, history = restored
        return state, history

    def epoch_begin(self, epoch: int, state: TrainState) -> TrainState:
        for callback in self.callbacks:
            state = callback.on_epoch_begin(epoch, state) or state
        return state

    def batch_end(self, batch: int, state: TrainState, logs: dict[str, float],
                  history: History) -> None:
        for callback in self.callbacks:
            if callback.batch_frequency and batch % callback.batch_frequency == 0:
                callback.on_train_batch_end(batch, state, logs, history)

    def epoch_end(self, epoch: int, state: TrainState, logs: dict[str, float],
                  history: History) -> bool:
        # Every callback sees the epoch, even after one asked to stop.
        stops = [bool(c.on_epoch_end(epoch, state, logs, history)) for c in self.callbacks]
        return any(stops)

    def train_end(self, state: TrainState, history: History) -> Any:
        for callback in self.callbacks:
            state = callback.on_train_end(state, history) or state
        return state

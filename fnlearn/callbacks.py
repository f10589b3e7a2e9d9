"""Keras-style callbacks for ``fit``: ``ModelCheckpoint`` and ``EarlyStopping``.

``fit`` calls, on each callback that has them, ``on_train_begin(state, history,
resume)`` (a returned ``(state, history)`` is where training starts), then
``on_epoch_end(epoch, state, logs, history)`` after every epoch (``True`` stops
training) and ``on_train_end(state, history)``. Callbacks run in list order and
each sees what the previous one returned, so put ``ModelCheckpoint`` first: an
``EarlyStopping`` after it then rebuilds its counters from the restored history
and a resumed run stops where the uninterrupted one would have.

``mode="auto"`` follows Keras: a monitored name containing ``"acc"`` is
maximized, anything else minimized.
"""

from __future__ import annotations

import difflib
import math
import warnings
from pathlib import Path
from typing import Any

from fnlearn.checkpoint import (
    delete_checkpoints,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from fnlearn.state import History, TrainState


def _is_better(monitor: str, mode: str):
    """``better(current, best, min_delta)`` for ``mode`` (``"min"``, ``"max"`` or ``"auto"``)."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "max" or (mode == "auto" and "acc" in monitor):
        return lambda current, best, min_delta=0.0: current - min_delta > best
    return lambda current, best, min_delta=0.0: current + min_delta < best


def _logged_name(monitor: str, names) -> str | None:
    """The logged name ``monitor`` refers to: itself, or Keras's ``acc`` alias of ``accuracy``."""
    if monitor in names:
        return monitor
    if monitor == "acc" or monitor.endswith("_acc"):
        alias = monitor[:-3] + "accuracy"
        if alias in names:
            return alias
    return None


def _monitored(monitor: str, logs: dict[str, float]) -> float:
    name = _logged_name(monitor, logs)
    if name is None:
        close = difflib.get_close_matches(monitor, list(logs), n=1)
        if monitor.startswith("val_") and not any(n.startswith("val_") for n in logs):
            hint = " (pass validation_data to fit)"
        elif close:
            hint = f" (did you mean {close[0]!r}?)"
        else:
            hint = ""
        raise ValueError(f"monitored value {monitor!r} is not in the epoch's logs "
                         f"{sorted(logs)}{hint}")
    return logs[name]


class ModelCheckpoint:
    """Saves the training state after every epoch and restores it when ``fit(resume=True)``.

    Args:
      directory: where checkpoints go (one subdirectory per epoch, see ``fnlearn.checkpoint``).
      keep: how many of the latest checkpoints to keep.
      save_best_only: save only epochs whose ``monitor`` value improved on the best so
        far, so the directory keeps the best ``keep`` (the newest being the best).
      monitor: the logged value compared with ``save_best_only``.
      mode: ``"min"``, ``"max"`` or ``"auto"``.
      overwrite: on a fresh (non-resumed) run, delete checkpoints already in
        ``directory`` instead of refusing to mix two runs in one directory.
      verbose: 1 prints what was restored or saved, 0 is silent.
      save_every_steps: also save every this many batches within an epoch (as
        Keras's ``BackupAndRestore(save_freq=...)``), with the position in the epoch,
        so a resumed run continues from the middle of the epoch. Checkpoints are then
        numbered by ``state.step``. ``fit`` streams the data in calls that end at
        these points (``fnlearn.stream_fit``).

    Attributes:
      restored_position: after a resume, ``(batches done in the epoch, their summed
        loss and metrics)`` from a mid-epoch checkpoint, or None.
    """

    def __init__(self, directory: str | Path, keep: int = 3, save_best_only: bool = False,
                 monitor: str = "val_loss", mode: str = "auto", overwrite: bool = False,
                 verbose: int = 1, save_every_steps: int | None = None):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive int, got {keep!r}")
        if save_every_steps is not None and (isinstance(save_every_steps, bool) or not
                                             isinstance(save_every_steps, int)
                                             or save_every_steps < 1):
            raise ValueError(f"save_every_steps must be a positive int or None, got "
                             f"{save_every_steps!r}")
        if save_every_steps and save_best_only:
            raise ValueError("save_every_steps saves within epochs, where nothing is monitored; "
                             "it cannot be combined with save_best_only")
        self.save_every_steps = save_every_steps
        self.restored_position: tuple[int, list] | None = None
        self.directory = Path(directory)
        self.keep = keep
        self.save_best_only = save_best_only
        self.monitor = monitor
        self.overwrite = overwrite
        self.verbose = verbose
        self._better = _is_better(monitor, mode)
        self.best = math.nan

    def on_train_begin(self, state: TrainState, history: History,
                       resume: bool) -> tuple[TrainState, History] | None:
        self.best = math.nan
        self.restored_position = None
        latest = latest_checkpoint(self.directory)
        if not resume:
            if latest is not None and not self.overwrite:
                raise FileExistsError(
                    f"{self.directory} already holds checkpoints (latest {latest}); pass "
                    "resume=True to continue that run, or ModelCheckpoint(..., overwrite=True) "
                    "to start over")
            if latest is not None:
                delete_checkpoints(self.directory)
            return None
        if latest is None:
            self._say(f"no checkpoint in {self.directory}: starting from scratch")
            return None
        state, history, meta = restore_checkpoint(self.directory, state)
        if meta.get("position"):
            if not self.save_every_steps:
                raise ValueError(f"{latest} was saved within an epoch; resume it with "
                                 "ModelCheckpoint(..., save_every_steps=N)")
            self.restored_position = (int(meta["position"]), meta["sums"])
        name = _logged_name(self.monitor, history.history)
        for value in history.history.get(name, []) if name else []:
            if math.isnan(self.best) or self._better(value, self.best):
                self.best = value
        within = (f", batch {self.restored_position[0]} of the epoch"
                  if self.restored_position else "")
        self._say(f"resuming from {latest} ({int(state.epoch)} epochs done, "
                  f"{int(state.step)} optimizer steps{within})")
        return state, history

    def on_epoch_end(self, epoch: int, state: TrainState, logs: dict[str, float],
                     history: History) -> bool:
        if self.save_best_only:
            value = _monitored(self.monitor, logs)
            if not (math.isnan(self.best) or self._better(value, self.best)):
                return False
            self.best = value
        path = save_checkpoint(self.directory, state, history, keep=self.keep,
                               metadata={"monitor": self.monitor, "best": self.best},
                               number=int(state.step) if self.save_every_steps else None)
        self._say(f"saved {path}")
        return False

    def on_steps_end(self, state: TrainState, history: History, position: int,
                     sums: list) -> None:
        """Saves mid-epoch: ``position`` batches of the epoch done, with their summed logs."""
        path = save_checkpoint(self.directory, state, history, keep=self.keep,
                               metadata={"monitor": self.monitor, "best": self.best,
                                         "position": position, "sums": sums},
                               number=int(state.step))
        self._say(f"saved {path} (batch {position} of epoch {int(state.epoch) + 1})")

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"ModelCheckpoint: {message}", flush=True)


class EarlyStopping:
    """Stops training when ``monitor`` has not improved for ``patience`` epochs (Keras semantics).

    With ``restore_best_weights=True`` the best epoch's parameters are kept in
    ``best_params`` and ``on_train_end`` returns the final state with them swapped in,
    which ``fit`` returns (as in Keras, only the weights: the optimizer state and
    counters stay those of the last epoch).

    Args:
      monitor: the logged value to watch.
      min_delta: smallest change that counts as an improvement.
      patience: epochs without improvement before stopping.
      mode: ``"min"``, ``"max"`` or ``"auto"``.
      restore_best_weights: remember the best epoch's parameters.
      verbose: 1 prints when training stops, 0 is silent.

    Attributes:
      best: best monitored value so far; best_epoch: its epoch (0-based);
      stopped_epoch: the epoch training stopped after (0 if it did not);
      best_params: the best epoch's parameters (``restore_best_weights`` only).
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", restore_best_weights: bool = False, verbose: int = 0):
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative int, got {patience!r}")
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.verbose = verbose
        self._better = _is_better(monitor, mode)
        self._reset()

    def _reset(self) -> None:
        self.best = math.nan
        self.best_epoch = -1
        self.wait = 0
        self.stopped_epoch = 0
        self.best_params: Any = None

    def _update(self, epoch: int, value: float) -> bool:
        """Counts one epoch; returns whether it improved on the best."""
        self.wait += 1
        if math.isnan(self.best) or self._better(value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        return False

    def on_train_begin(self, state: TrainState, history: History, resume: bool) -> None:
        self._reset()
        # A resumed run replays the restored history, so it stops where the
        # uninterrupted run would. Older best parameters were not saved: only the
        # restored state's can be recovered, when it is the best epoch.
        name = _logged_name(self.monitor, history.history)
        if name is not None:
            for epoch, value in zip(history.epoch, history.history[name], strict=True):
                self._update(epoch, value)
        if self.restore_best_weights and history.epoch and self.best_epoch == history.epoch[-1]:
            self.best_params = state.params

    def on_epoch_end(self, epoch: int, state: TrainState, logs: dict[str, float],
                     history: History) -> bool:
        if self._update(epoch, _monitored(self.monitor, logs)):
            if self.restore_best_weights:
                self.best_params = state.params
            return False
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            if self.verbose:
                print(f"EarlyStopping: epoch {epoch + 1}: {self.monitor} has not improved on "
                      f"{self.best:.4f} (epoch {self.best_epoch + 1}) for {self.wait} epochs; "
                      "stopping", flush=True)
            return True
        return False

    def on_train_end(self, state: TrainState, history: History) -> TrainState | None:
        if not self.restore_best_weights:
            return None
        if self.best_params is None:
            warnings.warn("EarlyStopping: the best epoch's parameters are not available (it "
                          "came before a resume); keeping the final ones", stacklevel=2)
            return None
        return state._replace(params=self.best_params)

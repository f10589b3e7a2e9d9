"""Keras-style callbacks for ``fit``: checkpoints, early stopping, learning-rate control.

Each is a ``fnlearn.Callback`` (``fnlearn.loop.hooks`` lists the hooks). Callbacks run
in list order and each sees what the previous one returned, so put ``ModelCheckpoint``
first: an ``EarlyStopping`` after it then rebuilds its counters from the restored
history and a resumed run stops where the uninterrupted one would have.

``LearningRateScheduler`` and ``ReduceLROnPlateau`` set the learning rate kept in the
optimizer state (``optax.inject_hyperparams``, as ``fnlearn.optim.keras_adam`` and the
Keras optimizer names build it) before an epoch, between compiled calls: no
recompilation.

``mode="auto"`` follows Keras: a monitored name containing ``"acc"`` is
maximized, anything else minimized.
"""

from __future__ import annotations

import difflib
import math
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fnlearn import optim
from fnlearn.checkpoint import (
    delete_checkpoints,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from fnlearn.loop.hooks import Callback
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


class ModelCheckpoint(Callback):
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
        Keras's ``BackupAndRestore(save_freq=...)``), with the position in the epoch
        (``History.in_progress``), so a resumed run continues from the middle of the
        epoch. Checkpoints are then numbered by ``state.step``. The epoch runs in
        compiled calls that end at these points.
    """

    restores_runs = True

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
        self.batch_frequency = save_every_steps
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
        state, history, _ = restore_checkpoint(self.directory, state)
        if history.in_progress and not self.save_every_steps:
            raise ValueError(f"{latest} was saved within an epoch; resume it with "
                             "ModelCheckpoint(..., save_every_steps=N)")
        name = _logged_name(self.monitor, history.history)
        for value in history.history.get(name, []) if name else []:
            if math.isnan(self.best) or self._better(value, self.best):
                self.best = value
        within = (f", batch {history.in_progress['batch']} of the epoch"
                  if history.in_progress else "")
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

    def on_train_batch_end(self, batch: int, state: TrainState, logs: dict[str, float],
                           history: History) -> None:
        """Saves mid-epoch: ``batch`` batches of the epoch done (``history.in_progress``)."""
        if history.in_progress is None:
            return  # the epoch's last batch: on_epoch_end saves it, validation included
        path = save_checkpoint(self.directory, state, history, keep=self.keep,
                               metadata={"monitor": self.monitor, "best": self.best},
                               number=int(state.step))
        self._say(f"saved {path} (batch {batch} of epoch {int(state.epoch) + 1})")

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"ModelCheckpoint: {message}", flush=True)


class EarlyStopping(Callback):
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
            self.best_params = jax.tree.map(lambda a: a.copy(), state.params)

    def on_epoch_end(self, epoch: int, state: TrainState, logs: dict[str, float],
                     history: History) -> bool:
        if self._update(epoch, _monitored(self.monitor, logs)):
            if self.restore_best_weights:
                # A copy: the next epoch's compiled call reuses the state's buffers.
                self.best_params = jax.tree.map(lambda a: a.copy(), state.params)
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


def _current_rate(state: TrainState) -> float:
    rate = optim.learning_rate(state.opt_state)
    if rate is None:
        optim.with_learning_rate(state.opt_state, 0.0)  # raises, naming the fix
    return float(np.asarray(rate))


class LearningRateScheduler(Callback):
    """Sets the learning rate before each epoch from ``schedule`` (Keras's callback).

    Args:
      schedule: ``schedule(epoch, learning_rate) -> new learning_rate`` (or
        ``schedule(epoch)``), with the 0-based epoch and the current rate.
      verbose: 1 prints each change.

    The optimizer must keep its learning rate in its state (``optax.inject_hyperparams``;
    the Keras names and ``fnlearn.optim.keras_*`` do); it changes between compiled calls.
    """

    def __init__(self, schedule, verbose: int = 0):
        if not callable(schedule):
            raise TypeError(f"schedule must be a function of (epoch, learning_rate), got "
                            f"{type(schedule).__name__}")
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch: int, state: TrainState) -> TrainState:
        current = _current_rate(state)
        try:
            rate = self.schedule(epoch, current)
        except TypeError:
            rate = self.schedule(epoch)
        rate = float(rate)
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"LearningRateScheduler: the schedule returned {rate!r} for epoch "
                             f"{epoch}; a learning rate must be a finite number >= 0")
        if self.verbose and rate != current:
            print(f"LearningRateScheduler: epoch {epoch + 1}: learning rate {rate:.6g}",
                  flush=True)
        return state._replace(opt_state=optim.with_learning_rate(state.opt_state, rate))


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when ``monitor`` stops improving (Keras's).

    Args:
      monitor: the logged value to watch.
      factor: the multiplier, in (0, 1).
      patience: epochs without improvement before a reduction.
      mode: ``"min"``, ``"max"`` or ``"auto"``.
      min_delta: smallest change that counts as an improvement.
      cooldown: epochs to wait after a reduction before counting again.
      min_lr: the rate is never reduced below this.
      verbose: 1 prints each reduction.

    The reduction decided after epoch ``e`` takes effect for epoch ``e + 1`` (as in
    Keras); the optimizer must keep its learning rate in its state.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0,
                 min_lr: float = 0.0, verbose: int = 0):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative int, got {patience!r}")
        self.monitor, self.factor, self.patience = monitor, factor, patience
        self.min_delta, self.cooldown, self.min_lr = abs(min_delta), cooldown, min_lr
        self.verbose = verbose
        self._better = _is_better(monitor, mode)
        self.best, self.wait, self.cooldown_left, self.pending = math.nan, 0, 0, None

    def on_train_begin(self, state: TrainState, history: History, resume: bool) -> None:
        _current_rate(state)
        self.best, self.wait, self.cooldown_left, self.pending = math.nan, 0, 0, None

    def on_epoch_begin(self, epoch: int, state: TrainState) -> TrainState | None:
        if self.pending is None:
            return None
        rate, self.pending = self.pending, None
        return state._replace(opt_state=optim.with_learning_rate(state.opt_state, rate))

    def on_epoch_end(self, epoch: int, state: TrainState, logs: dict[str, float],
                     history: History) -> bool:
        value = _monitored(self.monitor, logs)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.wait = 0
        if math.isnan(self.best) or self._better(value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return False
        if self.cooldown_left > 0:
            return False
        self.wait += 1
        if self.wait >= self.patience:
            current = _current_rate(state)
            rate = max(current * self.factor, self.min_lr)
            if rate < current:
                self.pending = rate
                if self.verbose:
                    print(f"ReduceLROnPlateau: epoch {epoch + 1}: {self.monitor} has not "
                          f"improved on {self.best:.4f} for {self.wait} epochs; learning rate "
                          f"{current:.6g} -> {rate:.6g}", flush=True)
            self.cooldown_left, self.wait = self.cooldown, 0
        return False

"""The values a training run is made of: ``TrainState``, ``History``, ``NonFiniteLossError``.

The ground floor: these know nothing of loops, callbacks or files, so the step,
the loop, checkpoints, callbacks and export all depend on them and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax


class TrainState(NamedTuple):
    """Everything that determines the rest of a training run; a pytree.

    Attributes:
      params: trainable model parameters.
      opt_state: the Optax optimizer state.
      model_state: non-trainable model variables (BatchNorm running statistics);
        ``{}`` for a model without any.
      step: optimizer updates applied so far (int32 scalar).
      epoch: epochs completed (int32 scalar).
      key: raw ``uint32`` data of the run's base PRNG key (``jax.random.key_data``);
        every epoch's shuffle and every step's dropout key are folded from it, the
        epoch and the step, so a run resumed from a saved state continues exactly as
        if never stopped.
    """

    params: Any
    opt_state: Any
    model_state: Any
    step: jax.Array
    epoch: jax.Array
    key: jax.Array


@dataclass
class History:
    """What ``fit`` returns besides the state, as Keras's ``History``.

    Attributes:
      history: per-epoch values: ``loss``, each metric, ``val_``-prefixed ones, and
        ``learning_rate`` when the optimizer reports one.
      epoch: the epoch numbers (0-based) the values belong to.
      epoch_seconds: wall time of each epoch as seen from the host (the first
        includes compilation); when several epochs are one call, its time is spread evenly.
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    def append(self, epoch: int, logs: dict[str, float], seconds: float) -> None:
        self.epoch.append(epoch)
        self.epoch_seconds.append(seconds)
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss.

    Attributes:
      state: the ``TrainState`` just before the step whose loss was not finite.
    """

    def __init__(self, message: str, state: TrainState | None = None):
        super().__init__(message)
        self.state = state

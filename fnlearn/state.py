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
      key: the run's base PRNG key, raw ``uint32`` data (``jax.random.key_data``) or a
        typed key; every epoch's shuffle and every step's dropout key are folded from it
        and the step, so a run resumed from a saved state continues exactly as if never
        stopped.
    """

    params: Any
    opt_state: Any
    model_state: Any
    step: jax.Array
    epoch: jax.Array
    key: jax.Array

    @classmethod
    def create(cls, params, opt_state, model_state=None, *, seed: int = 0) -> TrainState:
        """A state at step 0 of epoch 0 from parts you built (several networks: dicts of them).

        Args:
          params: the trainable parameters (any pytree).
          opt_state: the optimizer state(s) (any pytree).
          model_state: non-trainable state (BatchNorm statistics); ``{}`` if None.
          seed: the run's key (``state.key``) is drawn from it.
        """
        import jax.numpy as jnp

        return cls(params, opt_state, {} if model_state is None else model_state,
                   jnp.int32(0), jnp.int32(0), jax.random.key_data(jax.random.key(seed)))


@dataclass
class History:
    """What ``fit`` returns besides the state, as Keras's ``History``.

    Attributes:
      history: per-epoch values: ``loss``, each metric, ``val_``-prefixed ones, and
        ``learning_rate`` when the optimizer reports one.
      epoch: the epoch numbers (0-based) the values belong to.
      epoch_seconds: wall time of each epoch as seen from the host (the first
        includes compilation); when several epochs are one call, its time is spread evenly.
      in_progress: during an epoch, at a batch-level callback, where it is: ``{"epoch",
        "batch" (batches done), "sums" (their summed logs, plain floats)}``; None between
        epochs. A checkpoint taken there saves it, and a resumed run continues the epoch.
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    in_progress: dict[str, Any] | None = None

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

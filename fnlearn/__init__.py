"""fnlearn: pure-function models, Optax optimizers and a compiled fit loop for JAX."""

from fnlearn import losses, nn, optim
from fnlearn.train import (
    History,
    NonFiniteLossError,
    TrainState,
    evaluate,
    fit,
    init_state,
    predict,
)

__all__ = [
    "History",
    "NonFiniteLossError",
    "TrainState",
    "evaluate",
    "fit",
    "init_state",
    "losses",
    "nn",
    "optim",
    "predict",
]

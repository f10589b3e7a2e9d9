"""fnlearn: pure-function models, Optax optimizers and a compiled fit loop for JAX."""

from fnlearn import data, losses, nn, optim, plots
from fnlearn.cache import disable_compilation_cache, enable_compilation_cache
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
    "disable_compilation_cache",
    "enable_compilation_cache",
    "History",
    "NonFiniteLossError",
    "TrainState",
    "evaluate",
    "fit",
    "init_state",
    "data",
    "losses",
    "nn",
    "optim",
    "plots",
    "predict",
]

from fnlearn.cache import _enable_by_default  # noqa: E402

_enable_by_default()

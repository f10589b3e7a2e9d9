"""Activation functions by name, as Keras's ``activation="relu"`` strings name them.

A layer's ``activation`` argument is a name from ``ACTIVATIONS`` (kept in its config,
so converters and summaries can read it); ``activation_fn`` resolves it with a clear
error for a function passed where a name is expected.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
}


def activation_fn(name: str | None) -> Callable[[jax.Array], jax.Array]:
    if name is not None and not isinstance(name, str):
        what = (f"the function {getattr(name, '__name__', type(name).__name__)}"
                if callable(name) else f"{type(name).__name__} {name!r}")
        raise TypeError(f"activation must be a name (one of {sorted(ACTIVATIONS)}) or None, "
                        f"got {what}; pass its name, e.g. activation='relu'")
    name = name or "linear"
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]

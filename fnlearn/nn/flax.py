"""Flax ``linen`` modules as fnlearn layers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fnlearn.nn.core import Layer, constructor


@constructor
def from_flax(module: Any, *, train_argument: str | None = None) -> Layer:
    """Wraps a Flax ``linen`` module as a ``Layer`` usable wherever an fnlearn model is.

    linen's ``init``/``apply`` are the same idea as a layer's, with a concrete example
    instead of a shape and a variables dict around the parameters; this adapts the two.

    Args:
      module: a ``flax.linen.Module`` whose ``__call__`` takes a batch.
      train_argument: name of the module's keyword that switches training behaviour:
        ``"train"`` (passed ``train``) or ``"deterministic"`` (passed ``not train``);
        None if it has none. Dropout inside the module draws from the ``"dropout"`` rng.
    """
    if train_argument not in (None, "train", "deterministic"):
        raise ValueError(f"train_argument must be None, 'train' or 'deterministic', "
                         f"got {train_argument!r}")

    def mode(train):
        if train_argument is None:
            return {}
        return {train_argument: train if train_argument == "train" else not train}

    def init_fn(key, input_shape):
        example = jnp.zeros((1, *input_shape), jnp.float32)
        variables = module.init(key, example, **mode(False))
        if set(variables) - {"params"}:
            raise ValueError(f"from_flax supports modules whose only variable collection is "
                             f"'params'; this one also has {sorted(set(variables) - {'params'})}")
        out = jax.eval_shape(lambda v: module.apply(v, example, **mode(False)), variables)
        return tuple(out.shape[1:]), dict(variables.get("params", {}))

    def apply_fn(params, x, *, key=None, train=False):
        rngs = {"dropout": key} if key is not None else {}
        if train and train_argument is not None and key is None:
            raise ValueError("a Flax module in training mode needs a PRNG key: apply(..., key=key)")
        return module.apply({"params": params}, x, rngs=rngs, **mode(train))

    kind = f"flax_{type(module).__name__.lower()}"  # never mistaken for an fnlearn layer
    return Layer(init_fn, apply_fn, kind, {"flax_module": module})

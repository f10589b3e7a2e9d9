"""Flax modules as fnlearn layers: ``from_flax`` for ``linen``, ``from_nnx`` for ``flax.nnx``.

Both give a stateful ``Layer`` (``fnlearn.nn.core``): trainable parameters are the
module's ``params`` (linen) or ``nnx.Param`` variables (NNX); every other variable
(BatchNorm's running statistics: linen's ``batch_stats`` collection, NNX's
``BatchStat``) is model state, updated by training steps and used as it is in
inference. A module without such variables has an empty state.

BatchNorm inside a Flax module does not see fnlearn's mask of padded rows: when the
dataset is not a whole number of batches, ``fit`` pads the last batch with copies of
an example, and those copies enter that batch's statistics. Pick a ``batch_size``
that divides the dataset to keep them out; fnlearn's own ``nn.BatchNorm`` masks them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fnlearn.nn.core import Layer, constructor


def _train_mode(train_argument: str | None, train: bool) -> dict:
    if train_argument is None:
        return {}
    return {train_argument: train if train_argument == "train" else not train}


@constructor
def from_flax(module: Any, *, train_argument: str | None = None) -> Layer:
    """Wraps a Flax ``linen`` module as a ``Layer`` usable wherever an fnlearn model is.

    linen's ``init``/``apply`` are the same idea as a layer's, with a concrete example
    instead of a shape and a variables dict around the parameters; this adapts the two.
    Collections other than ``params`` (``batch_stats``) become the model state: mutable
    in training (``apply(..., mutable=[...])``), frozen in inference.

    Args:
      module: a ``flax.linen.Module`` whose ``__call__`` takes a batch.
      train_argument: name of the module's keyword that switches training behaviour:
        ``"train"`` (passed ``train``) or ``"deterministic"`` (passed ``not train``);
        None if it has none. Dropout inside the module draws from the ``"dropout"`` rng.
    """
    if train_argument not in (None, "train", "deterministic"):
        raise ValueError(f"train_argument must be None, 'train' or 'deterministic', "
                         f"got {train_argument!r}")

    def init_fn(key, input_shape):
        example = jnp.zeros((1, *input_shape), jnp.float32)
        variables = dict(module.init(key, example, **_train_mode(train_argument, False)))
        params = dict(variables.pop("params", {}))
        out = jax.eval_shape(lambda v: module.apply(
            v, example, **_train_mode(train_argument, False)), {"params": params, **variables})
        return tuple(out.shape[1:]), params, variables

    def apply_fn(params, x, *, state, key=None, train=False, mask=None):
        if train and train_argument is not None and key is None:
            raise ValueError("a Flax module in training mode needs a PRNG key: apply(..., key=key)")
        rngs = {"dropout": key} if key is not None else {}
        variables = {"params": params, **state}
        mode = _train_mode(train_argument, train)
        if train and state:
            out, updates = module.apply(variables, x, rngs=rngs, mutable=list(state), **mode)
            return out, {**state, **updates}
        return module.apply(variables, x, rngs=rngs, **mode), state

    kind = f"flax_{type(module).__name__.lower()}"  # never mistaken for an fnlearn layer
    return Layer(init_fn, apply_fn, kind, {"flax_module": module}, stateful=True)


def from_nnx(module: Any) -> Layer:
    """Wraps a ``flax.nnx`` module (the API Flax recommends) as a ``Layer``.

    An NNX module holds its variables: they were drawn when it was built, with its own
    ``nnx.Rngs``, so ``init`` returns them as they are and the seed given to ``fit`` does
    not re-draw them. ``nnx.Param`` variables are the parameters, the rest but the
    random streams (``BatchStat``) the model state, as plain nested dicts. Each call
    rebuilds the module (``nnx.merge``), sets ``train()`` or ``eval()``, and, given a
    key, reseeds every random stream from it, so dropout draws from fnlearn's step key.

    Args:
      module: a ``flax.nnx.Module`` whose ``__call__`` takes a batch.
    """
    from flax import nnx

    graphdef, params, rng_state, rest = nnx.split(module, nnx.Param, nnx.RngState, ...)

    def build(params_dict, state_dict, key):
        # Fresh copies inside the trace: NNX refuses to mutate variables of another trace.
        copy = jax.tree.map(lambda leaf: leaf, (params, rng_state, rest))
        nnx.replace_by_pure_dict(copy[0], params_dict)
        nnx.replace_by_pure_dict(copy[2], state_dict)
        if key is not None:
            nnx.replace_by_pure_dict(copy[1], _reseeded(nnx.to_pure_dict(copy[1]), key))
        return nnx.merge(graphdef, *copy)

    def init_fn(key, input_shape):
        example = jnp.zeros((1, *input_shape), jnp.float32)
        params_dict, state_dict = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
        out = jax.eval_shape(lambda p, s: apply_fn(p, example, state=s)[0],
                             params_dict, state_dict)
        return tuple(out.shape[1:]), params_dict, state_dict

    def apply_fn(params, x, *, state, key=None, train=False, mask=None):
        merged = build(params, state, key)
        if train:
            merged.train()
        else:
            merged.eval()
        out = merged(x)
        return out, (nnx.to_pure_dict(nnx.split(merged, nnx.Param, nnx.RngState, ...)[3])
                     if train else state)

    kind = f"nnx_{type(module).__name__.lower()}"
    return Layer(init_fn, apply_fn, kind, {"nnx_module": module}, stateful=True)


def _reseeded(streams: dict, key: jax.Array) -> dict:
    """Every random stream's key folded from ``key`` (one per stream), its count reset."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(streams)
    fresh = []
    for index, (path, leaf) in enumerate(leaves):
        name = getattr(path[-1], "key", None)
        if name == "key":
            fresh.append(jax.random.fold_in(key, index))
        elif name == "count":
            fresh.append(jnp.zeros_like(leaf))
        else:
            fresh.append(leaf)
    return jax.tree_util.tree_unflatten(tree, fresh)

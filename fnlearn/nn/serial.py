"""``serial``: layers in a chain (``keras.Sequential``, ``torch.nn.Sequential``, stax)."""

from __future__ import annotations

import jax

from fnlearn.nn.core import (
    Layer,
    abstract_init,
    apply,
    check_shared,
    constructor,
    init_with_state,
    layer_names,
)


@constructor
def serial(*layers: Layer) -> Layer:
    """Composes layers in order (``keras.Sequential`` / ``torch.nn.Sequential``).

    Keys are split once per position. Parameters (and state) of the layers that have
    any are stored under each layer's name: its own (``Dense(128, name="hidden")``) or
    ``<kind>_<n>``, n counting the unnamed layers of that kind (``dense_0``, ``dense_1``),
    so a layer inserted before a Dense of another kind does not rename it. One layer
    object listed twice is one layer applied twice, with shared weights.

    Raises:
      ValueError: no layers, or two layers with the same name.
      TypeError: an argument that is not a ``Layer``.
    """
    if not layers:
        raise ValueError("serial needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is {type(layer).__name__}, not a Layer")
    distinct = list({id(layer): layer for layer in layers}.values())
    by_id = dict(zip((id(layer) for layer in distinct), layer_names(distinct, "serial")))
    names = [by_id[id(layer)] for layer in layers]
    stateful = any(layer.stateful for layer in layers)

    def init_all(key, input_shape):
        params, state, first = {}, {}, {}
        shape = input_shape
        for name, layer, layer_key in zip(names, layers, jax.random.split(key, len(layers))):
            if name in first:  # a shared layer: its weights exist
                shape, *again = abstract_init(layer, layer_key, shape)
                check_shared(name, first[name], tuple(again))
                continue
            shape, layer_params, layer_state = init_with_state(layer, layer_key, shape)
            first[name] = (layer_params, layer_state)
            if layer_params:
                params[name] = layer_params
            if layer_state:
                state[name] = layer_state
        return shape, params, state

    def apply_all(params, x, *, state=None, key=None, train=False, mask=None):
        keys = jax.random.split(key, len(layers)) if key is not None else [None] * len(layers)
        new_state = dict(state or {})
        for name, layer, layer_key in zip(names, layers, keys):
            x, layer_state = apply(layer, params.get(name, {}), x, state=new_state.get(name),
                                   key=layer_key, train=train, mask=mask)
            if layer_state:
                new_state[name] = layer_state
        return x, new_state

    if stateful:
        return Layer(init_all, apply_all, "serial", {"names": names}, tuple(layers), True)

    def init_fn(key, input_shape):
        shape, params, _ = init_all(key, input_shape)
        return shape, params

    def apply_fn(params, x, *, key=None, train=False):
        return apply_all(params, x, key=key, train=train)[0]

    return Layer(init_fn, apply_fn, "serial", {"names": names}, tuple(layers))


Sequential = serial

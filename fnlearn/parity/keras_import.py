"""``from_keras``: a built Keras model (``Sequential`` or functional) as an fnlearn model.

A functional model is read from its config (``get_config()``: each layer's inbound
nodes), so ``Add``, ``Concatenate`` and the other merging layers, a layer called twice
(shared weights) and several inputs and outputs (lists or dicts) import as they are.
Each Keras layer becomes one fnlearn layer of the same name (``builders.KERAS_BUILDERS``),
its weights converted by its kind's ``registry`` entry; a ``ZeroPadding2D`` whose only
reader is a "valid" convolution becomes that convolution's padding. Keras and fnlearn
are both NHWC: nothing is transposed.
"""

from __future__ import annotations

import numpy as np

from fnlearn.nn.node import Input
from fnlearn.parity import registry
from fnlearn.parity.builders import KERAS_BUILDERS, KERAS_POSITIONAL, keras_layer
from fnlearn.parity.compare import to_numpy
from fnlearn.parity.graphs import KERAS_LAYERS, Op, import_keras
from fnlearn.parity.importer import (
    Call,
    Imported,
    build_model,
    checked,
    named,
    place_weights,
    report,
)
from fnlearn.parity.sequence_import import keras_masks

_FOLDS_PADDING = ("Conv2D", "DepthwiseConv2D")


def _history(value) -> tuple[str, int, int] | None:
    """``(layer, node index, tensor index)`` of a serialized Keras tensor, else None."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        name, node, index = value["config"]["keras_history"]
        return name, int(node), int(index)
    return None


def _map(value, fn):
    """``value`` (a tensor, or a list or dict of them) with each tensor replaced by ``fn(it)``."""
    if _history(value) is not None:
        return fn(_history(value))
    if isinstance(value, list | tuple):
        return [_map(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


def _is_triple(value) -> bool:
    return isinstance(value, list | tuple) and len(value) == 3 and isinstance(value[0], str)


def _structure(value, fn):
    """A model's ``input_layers``/``output_layers`` (a triple, or a list or dict of them)."""
    if _is_triple(value):
        return fn(tuple(value))
    if isinstance(value, dict):
        return {k: fn(tuple(v)) for k, v in value.items()}
    return tuple(fn(tuple(v)) for v in value)


class _Reader:
    def __init__(self, layers, config: dict):
        self.model = layers  # what get_layer(name) is asked of
        self.config = config
        self.layers = {entry["name"]: entry for entry in self.config["layers"]}
        self.readers = {}  # layer name -> how many calls read its outputs
        for entry in self.config["layers"]:
            for inbound in entry["inbound_nodes"]:
                _map(inbound["args"], lambda h: self.readers.__setitem__(
                    h[0], self.readers.get(h[0], 0) + 1))
        self.outputs = {}  # (layer, node index) -> the fnlearn node
        self.built, self.weights, self.calls, self.pad = {}, {}, [], {}
        self.masks = keras_masks(config, layers.get_layer)  # Masking folded into RNNs

    def tensor(self, history):
        name, node, index = history
        if (name, node) not in self.outputs:
            self.node(name, node)
        out = self.outputs[(name, node)]
        return out if index == 0 and not isinstance(out, list | tuple) else out[index]

    def node(self, name: str, index: int) -> None:
        entry = self.layers[name]
        layer = self.model.get_layer(name)
        where = f"layer {name!r} ({entry['class_name']})"
        inbound = entry["inbound_nodes"][index]
        if any(_history(v) is not None for v in _leaves(inbound["kwargs"])):
            raise ValueError(f"{where} takes a tensor as a keyword argument: not supported")
        args, kind = inbound["args"], entry["class_name"]
        if kind in KERAS_POSITIONAL and len(args) > 1:  # mha(query, value): one tuple
            args = [args[0]] if all(a == args[0] for a in args) else [list(args)]
        if len(args) != 1:
            raise ValueError(f"{where} is called with {len(args)} positional arguments: "
                             "fnlearn imports layers called on one tensor or one list")
        if kind == "ZeroPadding2D" and self.foldable(name):
            # Its reader, a "valid" convolution, takes the padding as its own.
            self.outputs[(name, index)] = self.tensor(_history(args[0]))
            self.pad[self.reader_of(name)] = tuple(tuple(int(p) for p in pair)
                                                   for pair in layer.get_config()["padding"])
            return
        x = _map(args[0], self.tensor)
        if name in self.built:
            fn_layer = self.built[name]
        else:
            if kind not in KERAS_LAYERS or kind not in KERAS_BUILDERS:
                raise ValueError(f"unsupported layer {kind} at {where}; supported: "
                                 f"{', '.join(sorted(KERAS_BUILDERS))}")
            fn_layer = keras_layer(layer, Op(KERAS_LAYERS[kind], layer, where, {
                "pad": self.pad.get(name), "call": inbound["kwargs"],
                "mask_value": self.masks.get(name)}))
            fn_layer = self.built[name] = None if fn_layer is None else named(fn_layer, name)
            if fn_layer is not None:
                self.convert(fn_layer, layer)
        if fn_layer is None:
            self.outputs[(name, index)] = x
            return
        out = fn_layer(x)
        self.calls.append(Call(fn_layer, x, out))
        self.outputs[(name, index)] = out

    def reader_of(self, name: str) -> str:
        for entry in self.config["layers"]:
            for inbound in entry["inbound_nodes"]:
                found: list = []
                _map(inbound["args"], found.append)
                if any(h[0] == name for h in found):
                    return entry["name"]
        raise KeyError(name)

    def foldable(self, name: str) -> bool:
        if self.readers.get(name) != 1:
            return False
        reader = self.layers[self.reader_of(name)]
        return (reader["class_name"] in _FOLDS_PADDING and len(reader["inbound_nodes"]) == 1
                and reader["config"].get("padding") == "valid")

    def convert(self, fn_layer, layer) -> None:
        entry = registry.REGISTRY.get(fn_layer.kind)
        if entry is not None and entry.from_keras is not None:
            self.weights[id(fn_layer)] = entry.from_keras(layer.get_weights(), fn_layer)


def _leaves(value) -> list:
    if isinstance(value, dict) and _history(value) is None:
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list | tuple):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _sequential_config(keras_model) -> dict:
    """A ``Sequential``'s layers as a functional config: each reads the one before."""
    layers, previous = [], None
    first = keras_model.layers[0] if keras_model.layers else None
    shape = tuple(keras_model.input_shape[1:])
    layers.append({"name": "input", "class_name": "InputLayer", "inbound_nodes": [],
                   "config": {"batch_shape": (None, *shape)}})
    previous = "input"
    for layer in keras_model.layers:
        if layer is first and type(layer).__name__ == "InputLayer":
            continue
        tensor = {"class_name": "__keras_tensor__", "config": {"keras_history": [previous, 0, 0]}}
        layers.append({"name": layer.name, "class_name": type(layer).__name__,
                       "config": layer.get_config(), "inbound_nodes": [{"args": [tensor],
                                                                         "kwargs": {}}]})
        previous = layer.name
    return {"layers": layers, "input_layers": ["input", 0, 0],
            "output_layers": [previous, 0, 0]}


def from_keras(keras_model, *, batch_size: int = 8, seed: int = 0,
               rtol: float = 1e-5, strict: bool = True) -> Imported:
    """The fnlearn model, parameters and state computing what ``keras_model`` computes.

    Args:
      keras_model: a built ``keras.Sequential`` or functional ``keras.Model``: chains,
        merging layers (``Add``, ``Concatenate``...), shared layers, several inputs and
        outputs (lists or dicts).
      batch_size, seed, rtol: the report's random batch and tolerance.
      strict: raise when the report fails; False warns and returns the import anyway.

    Returns:
      ``Imported(model, params, model_state, report)``: an ``nn.serial`` for a chain, an
      ``nn.Model`` with the Keras model's input and output structure otherwise.

    Raises:
      ValueError: an unsupported layer (named, with what is supported), a nested model.
      ImportMismatchError: the report failed (with ``strict``).
    """
    keras = import_keras()
    sequential = isinstance(keras_model, keras.Sequential)
    if sequential:
        reader = _Reader(_SequentialLayers(keras_model), _sequential_config(keras_model))
    else:
        reader = _Reader(keras_model, keras_model.get_config())
    inputs_by_name = {}

    def make_input(triple):
        name = triple[0]
        shape = tuple(reader.layers[name]["config"]["batch_shape"][1:])
        node = inputs_by_name[name] = Input(shape, name=name)
        reader.outputs[(name, 0)] = node
        return node

    inputs = _structure(reader.config["input_layers"], make_input)
    outputs = _structure(reader.config["output_layers"], reader.tensor)
    model = build_model(inputs, outputs, reader.calls)
    def shape_of(triple) -> tuple[int, ...]:
        return tuple(int(d) for d in reader.layers[triple[0]]["config"]["batch_shape"][1:])

    shapes = _structure(reader.config["input_layers"], shape_of)
    params, state = place_weights(model, shapes, reader.weights)
    rng = np.random.default_rng(seed)
    x = _structure(reader.config["input_layers"], lambda t: rng.normal(
        size=(batch_size, *shape_of(t))).astype(np.float32))
    reference = keras_model(x if not isinstance(x, tuple) else list(x), training=False)
    references = [to_numpy(r) for r in _ordered(reference)]
    first = x if isinstance(x, np.ndarray) else next(iter(
        x.values() if isinstance(x, dict) else x))
    return checked(Imported(model, params, state, report(
        keras_model.name, first.shape, references, model, params, state, x, rtol)), strict)


def _ordered(value) -> list:
    """Output leaves in fnlearn's order (dict keys sorted, as ``jax.tree.leaves`` has them)."""
    if isinstance(value, dict):
        return [leaf for k in sorted(value) for leaf in _ordered(value[k])]
    if isinstance(value, list | tuple):
        return [leaf for v in value for leaf in _ordered(v)]
    return [value]


class _SequentialLayers:
    """``get_layer`` over a ``Sequential``'s layers (its input is named ``input`` here)."""

    def __init__(self, keras_model):
        self.by_name = {layer.name: layer for layer in keras_model.layers}

    def get_layer(self, name):
        return self.by_name[name]

"""A model's architecture as JSON, and back: ``model_to_json`` and ``model_from_json``.

Keras's ``model.to_json()`` and ``keras.models.model_from_json``, for fnlearn layers.
Every layer built by an ``fnlearn.nn`` constructor records the constructor and its
arguments (``Layer.signature``); a graph model records its steps. The JSON lists each
distinct layer object once, the layers a model is made of before it, and refers to
them by position, so a layer called twice (shared weights) is one entry and comes
back as one object::

    {"format": "fnlearn-architecture", "version": 1, "model": 2, "layers": [
      {"constructor": "fnlearn.nn.dense.Dense", "kind": "dense", "name": null,
       "where": "model/dense_0", "arguments": {"units": 10, "activation": "relu", ...}},
      {"constructor": "fnlearn.nn.dense.Softmax", ...},
      {"constructor": "fnlearn.nn.serial.serial", "kind": "serial", "name": null,
       "where": "model", "arguments": {"layers": {"tuple": [{"layer": 0}, {"layer": 1}]}}}]}

Values keep their Python types: lists are JSON arrays, and a tuple is ``{"tuple": [...]}``,
a dict ``{"dict": [[key, value], ...]}``, a layer ``{"layer": i}``, a graph node
``{"step": i}``, a NumPy scalar ``{"numpy": dtype, "value": x}``. A graph model is
``{"graph": kind, "name", "steps", "inputs", "outputs"}``, each step an input (its
label and declared shape), a call (a layer on a structure of earlier steps) or an item
taken from one.

Rebuilding calls only fnlearn.nn's own constructors and those passed in
``custom_layers``: nothing named in the file is imported or evaluated, and there is
no pickle. A layer no constructor built (``Layer(init, apply, ...)``), a constructor
argument JSON cannot hold (a function, an array, a Flax module) and a constructor
fnlearn does not know are refused with ``SavingError``, naming the layers.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from fnlearn import nn
from fnlearn.nn.core import Layer, constructor_arguments
from fnlearn.nn.graph import Spec, graph_layer
from fnlearn.nn.node import Input, Node

FORMAT = "fnlearn-architecture"
VERSION = 1
_TAGS = ("tuple", "dict", "layer", "step", "numpy", "complex")


class SavingError(ValueError):
    """A model that cannot be written as JSON, or a saved model that cannot be rebuilt."""


class _NotJson(Exception):
    pass


class _Step:
    """A reference to a graph step, written ``{"step": i}``."""

    def __init__(self, index: int):
        self.index = index


def built_in_constructors() -> dict[str, Callable[..., Layer]]:
    """fnlearn.nn's layer constructors, by the qualified name their layers record."""
    public = (getattr(nn, name) for name in nn.__all__)
    return {f.constructs: f for f in public if isinstance(getattr(f, "constructs", None), str)}


def encode_value(value, layer_index: Callable[[Layer], int] | None = None):
    """``value`` as JSON data that keeps its Python types (see the module docstring).

    Raises:
      TypeError: a value JSON cannot hold (a function, an array, a Flax module...).
    """
    try:
        return _encode(value, layer_index)
    except _NotJson as error:
        bad = error.args[0]
        raise TypeError(f"a {type(bad).__name__} ({_short(bad)}) cannot be written as "
                        "JSON") from None


def _encode(value, layer_index):
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, Layer) and layer_index is not None:
        return {"layer": layer_index(value)}
    if isinstance(value, _Step):
        return {"step": value.index}
    if type(value) is list:
        return [_encode(v, layer_index) for v in value]
    if type(value) is tuple:
        return {"tuple": [_encode(v, layer_index) for v in value]}
    if type(value) is dict:
        return {"dict": [[_encode(k, layer_index), _encode(v, layer_index)]
                         for k, v in value.items()]}
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"numpy": value.dtype.name, "value": value.item()}
    if type(value) is complex:
        return {"complex": [value.real, value.imag]}
    raise _NotJson(value)


def decode_value(data, layers: Sequence[Layer] = (), steps: Sequence[Node] = ()):
    """The value ``encode_value`` wrote; ``{"layer": i}`` is ``layers[i]``, ``{"step": i}``
    ``steps[i]``.

    Raises:
      SavingError: data ``encode_value`` cannot have written.
    """
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode_value(v, layers, steps) for v in data]
    tags = [tag for tag in _TAGS if type(data) is dict and tag in data]
    if len(tags) != 1:
        raise SavingError(f"architecture JSON holds a value fnlearn did not write: {data!r}")
    tag, inner = tags[0], data[tags[0]]
    try:
        if tag == "tuple":
            return tuple(decode_value(v, layers, steps) for v in inner)
        if tag == "dict":
            return {decode_value(k, layers, steps): decode_value(v, layers, steps)
                    for k, v in inner}
        if tag == "layer":
            return layers[inner]
        if tag == "step":
            return steps[inner]
        if tag == "complex":
            return complex(*inner)
        return np.dtype(inner).type(data["value"])
    except (TypeError, ValueError, IndexError, KeyError) as error:
        raise SavingError(f"architecture JSON holds a value fnlearn did not write: {data!r} "
                          f"({error})") from error


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(layer: Layer, where: str) -> str:
    return f"{where} ({layer.kind})"


def model_to_dict(model: Layer) -> dict[str, Any]:
    """The architecture of ``model`` as JSON data (``model_to_json`` without the text).

    Raises:
      TypeError: ``model`` is not a ``Layer``.
      SavingError: layers it cannot write, each named by its place in the model.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model must be an fnlearn.nn Layer, got {type(model).__name__}")
    records: list[dict] = []
    index: dict[int, int] = {}
    problems: list[str] = []

    def visit(layer: Layer, where: str) -> int:
        if id(layer) not in index:
            record = _record(layer, where, visit, problems)
            index[id(layer)] = len(records)
            records.append(record)
        return index[id(layer)]

    root = visit(model, model.name or "model")
    if problems:
        raise SavingError("cannot write the model as JSON:\n" + "\n".join(
            f"  {line}" for line in problems))
    return {"format": FORMAT, "version": VERSION, "model": root, "layers": records}


def _record(layer: Layer, where: str, visit, problems: list[str]) -> dict:
    base = {"kind": layer.kind, "name": layer.name, "where": where}
    if "flax_module" in layer.config or "nnx_module" in layer.config:
        problems.append(f"{_describe(layer, where)} wraps a Flax module (from_flax/from_nnx), "
                        "which JSON cannot hold: rebuild the model in code and restore its "
                        "weights with fnlearn.restore_checkpoint or fnlearn.restore_params")
        return base
    built = constructor_arguments(layer)
    if built is not None:
        constructor, arguments = built
        children = _children(layer, where)
        encoded = {}
        for argument, value in arguments.items():
            try:
                encoded[argument] = _encode(value, lambda child: visit(
                    child, children.get(id(child), f"{where}/{child.name or child.kind}")))
            except _NotJson as error:
                problems.append(f"{_describe(layer, where)}: argument {argument}="
                                f"{_short(value)} cannot be written as JSON (it holds a "
                                f"{type(error.args[0]).__name__})")
        return {"constructor": constructor, **base, "arguments": encoded}
    spec = layer.config.get("graph")
    if isinstance(spec, Spec):
        return {"graph": layer.kind, "name": layer.name, "where": where,
                **_graph(spec, where, visit)}
    problems.append(f"{_describe(layer, where)} was not built by an fnlearn.nn constructor, "
                    "so the arguments that rebuild it are unknown: build it with a function "
                    "decorated with @fnlearn.nn.constructor (and pass that function to "
                    "load_model(..., custom_layers=[...]))")
    return base


def _children(layer: Layer, where: str) -> dict[int, str]:
    """Where each child of a serial model sits (``model/dense_1``), for messages."""
    names = layer.config.get("names")
    if layer.kind != "serial" or not isinstance(names, list):
        return {}
    return {id(child): f"{where}/{name}" for child, name in zip(layer.children, names)}


def _graph(spec: Spec, where: str, visit) -> dict:
    layer_index = [visit(layer, f"{where}/{name}") for layer, name in zip(spec.layers, spec.names)]
    steps = []
    for step in spec.steps:
        if step.op == "input":
            steps.append({"op": "input", "label": step.label, "shape": _encode(step.shape, None)})
        elif step.op == "item":
            steps.append({"op": "item", "parent": step.parents[0],
                          "index": _encode(step.index, None)})
        else:
            args = jax.tree.unflatten(step.treedef, [_Step(p) for p in step.parents])
            steps.append({"op": "call", "layer": layer_index[step.layer],
                          "args": _encode(args, None)})
    return {"steps": steps, "inputs": _packed(spec.input_structure, spec.inputs),
            "outputs": _packed(spec.output_structure, spec.outputs)}


def _packed(structure: tuple, positions: tuple[int, ...]):
    kind, keys = structure
    refs = [_Step(i) for i in positions]
    if kind == "single":
        return _encode(refs[0], None)
    if kind == "tuple":
        return _encode(tuple(refs), None)
    return _encode(dict(zip(keys, refs)), None)


def model_to_json(model: Layer, **dumps) -> str:
    """The architecture of ``model`` as a JSON string (Keras's ``model.to_json()``).

    Args:
      model: a model built from fnlearn.nn's constructors, graph models and your own
        ``@fnlearn.nn.constructor`` functions.
      dumps: passed to ``json.dumps`` (``indent=2``).

    Raises:
      SavingError: layers it cannot write, each named (see the module docstring).
    """
    return json.dumps(model_to_dict(model), **dumps)


def _custom_table(custom_layers) -> dict[str, Callable[..., Layer]]:
    if custom_layers is None:
        return {}
    if isinstance(custom_layers, Mapping):
        pairs = list(custom_layers.items())
    elif isinstance(custom_layers, Sequence) and not isinstance(custom_layers, str):
        pairs = [(getattr(f, "__name__", None), f) for f in custom_layers]
    else:
        raise TypeError(f"custom_layers must be a list of layer constructors or a dict of "
                        f"them by name, got {type(custom_layers).__name__}")
    table = {}
    for name, build in pairs:
        if not isinstance(name, str) or not callable(build):
            raise TypeError(f"custom_layers: {name!r}: {build!r} is not a layer constructor "
                            "(a function returning a Layer)")
        table[name] = build
        if isinstance(getattr(build, "constructs", None), str):
            table[build.constructs] = build
    return table


def _lookup(record: dict, built_in: dict, custom: dict):
    constructor = record["constructor"]
    return (built_in.get(constructor) or custom.get(constructor)
            or custom.get(constructor.rsplit(".", 1)[-1]))


def model_from_dict(data: Mapping, custom_layers=None) -> Layer:
    """The model ``model_to_dict`` described (``model_from_json`` without the text)."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise SavingError("not an fnlearn architecture (its 'format' is not "
                          f"{FORMAT!r})")
    if data.get("version") != VERSION:
        raise SavingError(f"architecture version {data.get('version')!r} is not one this "
                          f"fnlearn reads ({VERSION})")
    built_in, custom = built_in_constructors(), _custom_table(custom_layers)
    records = data["layers"]
    unknown = [f"{r['where']} ({r['kind']}, built by {r['constructor']})" for r in records
               if "constructor" in r and _lookup(r, built_in, custom) is None]
    if unknown:
        names = sorted({r["constructor"].rsplit(".", 1)[-1] for r in records
                        if "constructor" in r and _lookup(r, built_in, custom) is None})
        raise SavingError(
            "cannot rebuild layers whose constructors are not fnlearn.nn's: "
            f"{'; '.join(unknown)}. Pass your constructors: custom_layers=[{', '.join(names)}] "
            f"(or a dict {{{', '.join(repr(n) + ': ...' for n in names)}}})")
    layers: list[Layer] = []
    for record in records:
        if "constructor" in record:
            layers.append(_call(_lookup(record, built_in, custom), record, layers))
        elif "graph" in record:
            layers.append(_rebuild_graph(record, layers))
        else:
            raise SavingError(f"architecture JSON: layer {record.get('where')!r} has neither "
                              "a constructor nor a graph")
    return layers[data["model"]]


def _call(build: Callable[..., Layer], record: dict, layers: list[Layer]) -> Layer:
    arguments = {k: decode_value(v, layers) for k, v in record["arguments"].items()}
    args, kwargs = [], {}
    for parameter in inspect.signature(build).parameters.values():
        if parameter.name not in arguments:
            continue
        value = arguments.pop(parameter.name)
        if parameter.kind == parameter.VAR_POSITIONAL:
            args += list(value)
        elif parameter.kind == parameter.VAR_KEYWORD:
            kwargs.update(value)
        elif parameter.kind == parameter.KEYWORD_ONLY:
            kwargs[parameter.name] = value
        else:
            args.append(value)
    where = f"{record['where']} ({record['kind']})"
    if arguments:
        raise SavingError(f"cannot rebuild {where}: {record['constructor']} takes no argument "
                          f"{sorted(arguments)} (saved by another version of it?)")
    try:
        layer = build(*args, name=record["name"], **kwargs)
    except (TypeError, ValueError) as error:
        raise SavingError(f"cannot rebuild {where} with {record['constructor']}: "
                          f"{error}") from error
    if not isinstance(layer, Layer) or layer.kind != record["kind"]:
        got = layer.kind if isinstance(layer, Layer) else type(layer).__name__
        raise SavingError(f"cannot rebuild {where}: its constructor built a {got!r}, the saved "
                          f"layer is a {record['kind']!r} (another function of that name?)")
    return layer


def _rebuild_graph(record: dict, layers: list[Layer]) -> Layer:
    nodes: list[Node] = []
    for step in record["steps"]:
        if step["op"] == "input":
            shape = decode_value(step["shape"])
            nodes.append(Input(shape, name=step["label"] or None))
        elif step["op"] == "item":
            nodes.append(nodes[step["parent"]][decode_value(step["index"])])
        else:
            nodes.append(Node("call", layer=layers[step["layer"]],
                              args=decode_value(step["args"], layers, nodes)))
    inputs = decode_value(record["inputs"], layers, nodes)
    outputs = decode_value(record["outputs"], layers, nodes)
    try:
        return graph_layer(inputs, outputs, name=record["name"], kind=record["graph"])
    except (TypeError, ValueError) as error:
        raise SavingError(f"cannot rebuild the graph model {record['where']!r}: "
                          f"{error}") from error


def model_from_json(text: str, custom_layers=None) -> Layer:
    """The model ``model_to_json`` wrote (Keras's ``keras.models.model_from_json``).

    Its parameters are not part of it: initialize them, or use ``fnlearn.load_model``
    for a model saved with its training state.

    Args:
      text: the JSON.
      custom_layers: your own layer constructors (``@fnlearn.nn.constructor``
        functions) the model uses: a list of them, or a dict by name (Keras's
        ``custom_objects``).

    Raises:
      SavingError: not such JSON; a layer whose constructor is neither fnlearn.nn's nor
        in ``custom_layers`` (all are named, with the list to pass); a constructor that
        refuses the saved arguments.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SavingError(f"the architecture is not valid JSON: {error}") from error
    return model_from_dict(data, custom_layers)

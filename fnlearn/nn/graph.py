"""Graph models: layers called on ``nn.Input`` nodes, then ``nn.Model(inputs, outputs)``.

Keras's functional API, kept a pure ``(init, apply)`` layer::

    x = nn.Input((28, 28, 1))
    h = nn.Conv2D(1, 3, padding="same")(x)
    y = nn.Add()([h, x])
    model = nn.Model(x, y)

or a PyTorch-style ``forward`` over nodes (``nn.Model(forward)``, one input per
argument). Calling one layer object twice shares its weights; two equal layer objects
are two layers. A model is a layer, so it can be called inside another model.

When ``Model`` is called the nodes reachable from the outputs are put in one order
(``Step``\\ s, as ``torch.fx`` keeps its nodes): inputs first, then each node after the
nodes it reads, branches in argument order. ``init`` and ``apply`` walk that order once.
Parameters and state are keyed by layer name (``layer_names``); each layer's
initialization key is folded from the model's key and its name, and each call's
dropout key from the step's key and the call's label, so neither depends on the
other layers. Every stateful layer gets the state threaded through the calls and
the padded-batch ``mask``.
"""

from __future__ import annotations

import inspect
import zlib
from dataclasses import dataclass, replace
from typing import Any

import jax

from fnlearn.nn.core import (
    Layer,
    Signature,
    abstract_init,
    apply,
    check_name,
    check_shared,
    init_with_state,
    layer_names,
)
from fnlearn.nn.node import Input, Node, is_node


@dataclass(frozen=True)
class Step:
    """One node of a graph model, in run order.

    Attributes:
      op: ``"input"``, ``"call"`` or ``"item"``.
      label: its name in summaries and messages (``dense_0``, ``dense_0 (call 2)``).
      layer: for a call, the index of its layer in ``Spec.layers``; ``call`` counts the
        calls of that layer before it (0: the one that owns the weights).
      treedef: for a call, the structure its inputs ``parents`` are packed into.
      parents: the steps it reads.
      index: for an item, the key or position taken; for an input, its key.
      shape: for an input, the declared per-example shape (or None).
    """

    op: str
    label: str
    layer: int | None = None
    call: int = 0
    treedef: Any = None
    parents: tuple[int, ...] = ()
    index: Any = None
    shape: tuple | None = None


@dataclass(frozen=True)
class Spec:
    """A graph model as data: its steps in order, its distinct layers and their names, and
    where its inputs and outputs are (``structure``: ``("single", None)``, ``("tuple", n)``
    or ``("dict", keys)``)."""

    steps: tuple[Step, ...]
    layers: tuple[Layer, ...]
    names: tuple[str, ...]
    inputs: tuple[int, ...]
    input_structure: tuple
    outputs: tuple[int, ...]
    output_structure: tuple


def _structure(value, argument: str) -> tuple[tuple, list, list]:
    """``(structure, keys, nodes)`` of a model's inputs or outputs: a node, or a tuple, list
    or dict of nodes."""
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"Model {argument} dict keys must be strings, got {key!r}")
        keys = list(value)
        return ("dict", tuple(keys)), keys, list(value.values())
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"Model {argument} is empty")
        return ("tuple", len(value)), list(range(len(value))), list(value)
    return ("single", None), [None], [value]


def _where(argument: str, key) -> str:
    return argument if key is None else f"{argument}[{key!r}]"


def _parents(node: Node) -> list[Node]:
    if node.op == "item":
        return [node.parent]
    if node.op == "call":
        return jax.tree.leaves(node.args, is_leaf=is_node)
    return []


def build_spec(inputs, outputs, where: str) -> Spec:
    """The ``Spec`` of the graph from ``inputs`` to ``outputs``, checked.

    Raises:
      TypeError: an input that is not an ``nn.Input`` node, or an output that is not a node.
      ValueError: an input listed twice or used by no output, an output computed from an
        ``nn.Input`` that is not among the inputs, or two layers with one name.
    """
    input_structure, input_keys, input_nodes = _structure(inputs, "inputs")
    output_structure, output_keys, output_nodes = _structure(outputs, "outputs")
    order: list[Node] = []
    position: dict[int, int] = {}
    labels: dict[int, str] = {}
    for key, node in zip(input_keys, input_nodes):
        if not is_node(node) or node.op != "input":
            raise TypeError(f"Model {_where('inputs', key)} must be an nn.Input node, got "
                            f"{node!r}")
        if id(node) in position:
            raise ValueError(f"Model {_where('inputs', key)} lists an input a second time")
        position[id(node)] = len(order)
        order.append(node)
        labels[id(node)] = key if isinstance(key, str) else node.name or f"input_{len(order) - 1}"
    for key, out in zip(output_keys, output_nodes):
        if not is_node(out):
            raise TypeError(f"Model {_where('outputs', key)} must be a node (a layer called on "
                            f"nn.Input nodes), got {type(out).__name__}")
        stack = [(out, False)]
        while stack:  # depth first, each node after the nodes it reads
            node, ready = stack.pop()
            if id(node) in position:
                continue
            if ready:
                position[id(node)] = len(order)
                order.append(node)
                continue
            if node.op == "input":
                raise ValueError(
                    f"Model {_where('outputs', key)} is computed from {node!r}, which is not "
                    f"one of the model's inputs: add it to inputs, or build that output from "
                    f"the inputs given")
            stack.append((node, True))
            stack += [(p, False) for p in reversed(_parents(node)) if id(p) not in position]
    used = {id(p) for node in order for p in _parents(node)} | {id(o) for o in output_nodes}
    for key, node in zip(input_keys, input_nodes):
        if id(node) not in used:
            raise ValueError(f"Model {_where('inputs', key)} ({labels[id(node)]!r}) is not used "
                             "by any output: remove it, or use it")
    calls = [node for node in order if node.op == "call"]
    distinct = list({id(node.layer): node.layer for node in calls}.values())
    layer_index = {id(layer): i for i, layer in enumerate(distinct)}
    names = layer_names(distinct, where)
    steps, seen = [], {}
    for node in order:
        parents = tuple(position[id(p)] for p in _parents(node))
        if node.op == "input":
            steps.append(Step("input", labels[id(node)], index=input_keys[position[id(node)]],
                              shape=node.shape))
        elif node.op == "item":
            label = f"{steps[parents[0]].label}[{node.index!r}]"
            steps.append(Step("item", label, parents=parents, index=node.index))
        else:
            i = layer_index[id(node.layer)]
            call = seen.get(i, 0)
            seen[i] = call + 1
            label = names[i] if call == 0 else f"{names[i]} (call {call + 1})"
            treedef = jax.tree.structure(node.args, is_leaf=is_node)
            steps.append(Step("call", label, i, call, treedef, parents))
    return Spec(tuple(steps), tuple(distinct), tuple(names),
                tuple(position[id(n)] for n in input_nodes), input_structure,
                tuple(position[id(n)] for n in output_nodes), output_structure)


def _fold(key, text: str):
    """``key`` folded with a name: a layer's key depends on its name, not its place."""
    return None if key is None else jax.random.fold_in(key, zlib.crc32(text.encode()) & 0x7FFFFFFF)


def split_inputs(spec: Spec, value, argument: str) -> list:
    """``value`` (a model's inputs or input shapes) as one entry per input, checked."""
    kind, keys = spec.input_structure
    if kind == "single":
        return [value]
    if kind == "tuple":
        if not isinstance(value, list | tuple) or len(value) != keys:
            got = (f"{len(value)} items" if isinstance(value, list | tuple)
                   else type(value).__name__)
            raise ValueError(f"{argument} must be a tuple of {keys} (the model's inputs "
                             f"{[spec.steps[i].label for i in spec.inputs]}), got {got}")
        return list(value)
    if not isinstance(value, dict) or set(value) != set(keys):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"{argument} must be a dict with the model's inputs {list(keys)}, "
                         f"got {got}")
    return [value[k] for k in keys]


def _pack(structure: tuple, values: list):
    kind, keys = structure
    if kind == "single":
        return values[0]
    if kind == "tuple":
        return tuple(values)
    return dict(zip(keys, values))


_DISPLAY = {"relu": "ReLU", "relu6": "ReLU6", "elu": "ELU", "gelu": "GELU", "gelu_tanh": "GELU",
            "silu": "SiLU", "leaky_relu": "LeakyReLU", "upsampling2d": "UpSampling2D",
            "lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN",
            "multi_head_attention": "MultiHeadAttention", "global_avg_pool1d":
            "GlobalAveragePooling1D", "transformer_encoder": "TransformerEncoderLayer"}


def display_kind(kind: str) -> str:
    """A layer kind as Keras prints class names: ``batch_norm`` -> ``BatchNorm``."""
    if kind in _DISPLAY:
        return _DISPLAY[kind]
    return "".join(part.capitalize() for part in kind.split("_")).replace("2d", "2D") \
        .replace("1d", "1D")


def _check_declared(step: Step, shape) -> None:
    declared = step.shape
    if declared is None:
        return
    if (not isinstance(shape, tuple) or len(shape) != len(declared)
            or any(d is not None and d != s for d, s in zip(declared, shape))):
        raise ValueError(f"input {step.label!r} is declared with per-example shape {declared} "
                         f"but the model is initialized for {shape}")


def _item(value, step: Step, parent: Step):
    try:
        return value[step.index]
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"{step.label}: the output of {parent.label!r} has no item "
                         f"{step.index!r} (its output shape is {value})") from error


def run_init(spec: Spec, key, input_shape, record: dict | None = None):
    """``(output_shapes, params, state)`` of the graph; ``record`` gets each step's shape."""
    shapes: list = [None] * len(spec.steps)
    for i, shape in zip(spec.inputs, split_inputs(spec, input_shape, "input_shape")):
        _check_declared(spec.steps[i], shape)
        shapes[i] = shape
    params, state, first = {}, {}, {}
    for i, step in enumerate(spec.steps):
        if step.op == "item":
            shapes[i] = _item(shapes[step.parents[0]], step, spec.steps[step.parents[0]])
        elif step.op == "call":
            layer, name = spec.layers[step.layer], spec.names[step.layer]
            args = jax.tree.unflatten(step.treedef, [shapes[p] for p in step.parents])
            try:
                if step.call == 0:
                    shapes[i], layer_params, layer_state = init_with_state(
                        layer, _fold(key, name), args)
                    first[name] = (layer_params, layer_state)
                    if layer_params:
                        params[name] = layer_params
                    if layer_state:
                        state[name] = layer_state
                else:
                    shapes[i], *again = abstract_init(layer, _fold(key, name), args)
                    check_shared(name, first[name], tuple(again))
            except (ValueError, TypeError) as error:
                fed = " and ".join(f"{spec.steps[p].label!r} {shapes[p]}" for p in step.parents)
                raise ValueError(f"{step.label} ({display_kind(layer.kind)}) called on {fed}: "
                                 f"{error}") from error
        if record is not None:
            record[i] = shapes[i]
    return _pack(spec.output_structure, [shapes[i] for i in spec.outputs]), params, state


def run_apply(spec: Spec, params, x, state, key, train, mask):
    """``(outputs, new_state)`` of the graph on the batch ``x``."""
    values: list = [None] * len(spec.steps)
    for i, value in zip(spec.inputs, split_inputs(spec, x, "x")):
        values[i] = value
    new_state = dict(state or {})
    for i, step in enumerate(spec.steps):
        if step.op == "item":
            values[i] = values[step.parents[0]][step.index]
        elif step.op == "call":
            layer, name = spec.layers[step.layer], spec.names[step.layer]
            args = jax.tree.unflatten(step.treedef, [values[p] for p in step.parents])
            values[i], layer_state = apply(layer, params.get(name, {}), args,
                                           state=new_state.get(name), key=_fold(key, step.label),
                                           train=train, mask=mask)
            if layer.stateful:
                new_state[name] = layer_state
    return _pack(spec.output_structure, [values[i] for i in spec.outputs]), new_state


def graph_layer(inputs, outputs, *, name: str | None = None, kind: str = "model") -> Layer:
    """The layer of the graph from ``inputs`` to ``outputs`` (``Model``, and the helpers')."""
    check_name(name)
    spec = build_spec(inputs, outputs, f"Model {name!r}" if name else "Model")
    return spec_layer(spec.layers, spec=spec, kind=kind, name=name)


def spec_layer(layers: tuple[Layer, ...], *, spec: Spec, kind: str = "model",
               name: str | None = None) -> Layer:
    """The layer of the graph ``spec`` with its distinct layers replaced by ``layers``.

    The graph's steps, names and structure stay; its ``Signature`` builds it again with
    other layers, which is how ``nn.core.rebuild`` (and ``nn.with_policy``) go through a
    graph model.
    """
    check_name(name)
    layers = tuple(layers)
    if len(layers) != len(spec.layers):
        raise ValueError(f"a graph of {len(spec.layers)} layers cannot be rebuilt with "
                         f"{len(layers)}")
    spec = replace(spec, layers=layers)
    stateful = any(layer.stateful for layer in spec.layers)
    kind_out, keys = spec.output_structure
    config = {"graph": spec,
              "output_structure": None if kind_out == "single" else (kind_out, keys)}
    arguments = inspect.signature(spec_layer).bind(layers, spec=spec, kind=kind)
    signature = Signature(("fnlearn.nn.graph", kind, spec), spec_layer, arguments)

    def init_all(key, input_shape):
        return run_init(spec, key, input_shape)

    def apply_all(params, x, *, state=None, key=None, train=False, mask=None):
        return run_apply(spec, params, x, state, key, train, mask)

    if stateful:
        return Layer(init_all, apply_all, kind, config, spec.layers, True, name, signature)

    def init_fn(key, input_shape):
        shape, params, _ = run_init(spec, key, input_shape)
        return shape, params

    def apply_fn(params, x, *, key=None, train=False):
        return run_apply(spec, params, x, {}, key, train, None)[0]

    return Layer(init_fn, apply_fn, kind, config, spec.layers, False, name, signature)


def Model(inputs, outputs=None, *, name: str | None = None) -> Layer:
    """A graph model (Keras ``keras.Model(inputs, outputs)``), as one ``Layer``.

    Args:
      inputs: an ``nn.Input`` node, or a tuple, list or dict of them: ``apply`` then
        takes an array, or a tuple or dict of arrays, and ``init`` the same structure
        of per-example shapes. Or a function ``forward(a, b, ...)`` over nodes, as a
        PyTorch ``forward``: one input per argument (named after it).
      outputs: a node, or a tuple, list or dict of nodes (the structure ``apply``
        returns; dict outputs pair with ``fit``'s ``loss={...}`` by key).
      name: the model's name when it is used as a layer in another model.

    Raises:
      TypeError, ValueError: see ``build_spec``; shape errors surface at ``init``, with
        the step and the shapes of its inputs.
    """
    if isinstance(inputs, Layer):
        raise TypeError("Model takes its inputs and outputs (nodes), or a forward function; "
                        f"{inputs!r} is a layer, already usable wherever a model is")
    if outputs is None and callable(inputs) and not is_node(inputs):
        forward = inputs
        arguments = [p.name for p in inspect.signature(forward).parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not arguments:
            raise TypeError("Model(forward): forward must take at least one input argument")
        nodes = [Input(name=argument) for argument in arguments]
        outputs = forward(*nodes)
        inputs = nodes[0] if len(nodes) == 1 else tuple(nodes)
    if outputs is None:
        raise TypeError("Model needs outputs: Model(inputs, outputs), or Model(forward)")
    return graph_layer(inputs, outputs, name=name)

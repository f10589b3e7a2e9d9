"""Reference models and weights, both ways, between fnlearn and PyTorch or Keras.

``to_torch_module(model, input_shape)`` and ``to_keras_model(model, input_shape)``
build the network an fnlearn model computes. ``variables_to_torch`` /
``variables_from_torch`` (and the Keras pair) move weights and BatchNorm statistics.
The two models are walked together as chains of ops (``graphs``): their kinds are
compared in order, activations included (dropout and normalization aside), so a
port that lost a ``tanh`` is refused naming both sides, and every shape is checked
before anything is copied. The per-kind work lives in ``registry.REGISTRY``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax

from fnlearn.nn.core import Layer, init_with_state
from fnlearn.parity import named, registry, sequence_walk
from fnlearn.parity.graphs import (
    ELEMENTWISE_KINDS,
    IGNORED_KINDS,
    Op,
    import_keras,
    import_torch,
    keras_ops,
    torch_ops,
)

Params = dict[str, Any]


class Step(NamedTuple):
    """One fnlearn layer of a model, where it sits, and the per-example shape it receives."""

    name: str
    position: int
    layer: Layer
    shape: tuple[int, ...]


def walk(model: Layer, input_shape: Sequence[int]) -> list[Step]:
    """The model's layers with their names (as in its params) and input shapes."""
    layers = model.children if model.kind == "serial" else (model,)
    names = model.config.get("names", [model.kind]) if model.kind == "serial" else [model.kind]
    steps, shape = [], tuple(input_shape)
    key = jax.random.key(0)
    for position, (name, layer) in enumerate(zip(names, layers)):
        steps.append(Step(name, position, layer, shape))
        out = {}

        def run(k, layer=layer, shape=shape, out=out):
            out["shape"], params, state = init_with_state(layer, k, shape)
            return params, state

        jax.eval_shape(run, key)
        shape = _concrete(out["shape"])
    return steps


def _concrete(shape):
    """A shape (or a tuple of shapes: a layer returning its states too) as Python ints."""
    return tuple(_concrete(d) if isinstance(d, tuple) else int(d) for d in shape)


def to_torch_module(model: Layer, input_shape: Sequence[int], params: Params | None = None,
                    model_state: Params | None = None):
    """Builds the ``torch.nn.Sequential`` that computes what ``model`` computes.

    Args:
      model: an fnlearn ``serial`` model (or a single layer) of registered kinds.
      input_shape: fnlearn's per-example input shape (NHWC for images; the PyTorch
        twin then takes NCHW inputs).
      params, model_state: fnlearn weights (and BatchNorm statistics) to load; None keeps
        PyTorch's own initialization.

    Raises:
      ValueError: a layer has no PyTorch counterpart (its kind and position are named).
    """
    torch = import_torch()
    modules = []
    for step in walk(model, input_shape):
        modules += registry.entry(step.layer, step.position, "PyTorch").torch(step.layer,
                                                                              step.shape)
    module = torch.nn.Sequential(*modules)
    if params is not None:
        module.load_state_dict(variables_to_torch(params, module, model=model,
                                                  input_shape=input_shape,
                                                  model_state=model_state))
    return module


def to_keras_model(model: Layer, input_shape: Sequence[int], params: Params | None = None,
                   model_state: Params | None = None):
    """Builds the ``keras.Sequential`` that computes what ``model`` computes (NHWC, as fnlearn).

    ``Normalize`` becomes a ``Lambda`` that divides, to round exactly as fnlearn does.
    """
    keras = import_keras()
    layers = [keras.Input(shape=tuple(input_shape))]
    for step in walk(model, input_shape):
        layers += registry.entry(step.layer, step.position, "Keras").keras(keras, step.layer,
                                                                           step.shape)
    keras_model = keras.Sequential(layers)
    if params is not None:
        variables_to_keras(params, keras_model, model=model, input_shape=input_shape,
                           model_state=model_state)
    return keras_model


WEIGHTED_KINDS = ("linear", "conv2d", "batch_norm")


def _kept(kinds, weighted_only: bool) -> list:
    if weighted_only:
        return [k for k in kinds if (getattr(k, "kind", k)) in WEIGHTED_KINDS]
    return [k for k in kinds if getattr(k, "kind", k) not in IGNORED_KINDS]


def align(steps: list[Step], ops: list[Op], framework: str,
          weighted_only: bool = False) -> list[tuple[Step, list[Op]]]:
    """Pairs each fnlearn layer with the ops it amounts to in the other model, kind by kind.

    Args:
      steps, ops: the two models as chains.
      framework: the other model's framework, for messages.
      weighted_only: compare only the layers that hold weights (when the fnlearn side
        is known from its parameters alone); otherwise activations count too.

    Raises:
      ValueError: the kinds differ at some point (both sides named), or one model has
        layers left over.
    """
    others = _kept(ops, weighted_only)
    pairs, cursor = [], 0
    for step in steps:
        wanted = _kept(registry.entry(step.layer, step.position, framework).ops(step.layer),
                       weighted_only)
        got = others[cursor:cursor + len(wanted)]
        if [op.kind for op in got] != wanted:
            theirs = ", ".join(f"{op.kind} at {op.where}" for op in got) or "nothing left"
            raise ValueError(
                f"layer kinds differ: fnlearn layer {step.name!r} ({registry.describe(step.layer)})"
                f" is {' + '.join(wanted)}, but the {framework} model has {theirs}")
        pairs.append((step, got))
        cursor += len(wanted)
    if cursor != len(others):
        rest = ", ".join(f"{op.kind} at {op.where}" for op in others[cursor:])
        raise ValueError(f"layer kinds differ: the {framework} model has more layers than the "
                         f"fnlearn model: {rest}")
    return pairs


def _flatten_from(steps: list[Step], index: int) -> tuple[int, ...] | None:
    """The image shape a Dense's input was flattened from, when it directly follows a Flatten."""
    for step in reversed(steps[:index]):
        if step.layer.kind == "flatten":
            # A channels-first Flatten already orders the features as PyTorch does.
            channels_first = step.layer.config.get("channels_first", False)
            return step.shape if len(step.shape) == 3 and not channels_first else None
        if step.layer.kind not in IGNORED_KINDS + ELEMENTWISE_KINDS:
            return None
    return None


def _weights(params, model_state, step):
    return (params.get(step.name, {}) if isinstance(params, dict) else {},
            (model_state or {}).get(step.name, {}))


def variables_to_torch(params: Params, module, *, model: Layer, input_shape: Sequence[int],
                       model_state: Params | None = None,
                       weighted_only: bool = False) -> dict[str, Any]:
    """A ``state_dict`` for ``module`` holding fnlearn's weights (and BatchNorm statistics).

    A graph model pairs with the module by name (``named``), a chain in order."""
    if "graph" in model.config:
        return named.to_torch(params, module, model, input_shape, model_state)
    torch = import_torch()
    steps = walk(model, input_shape)
    state = module.state_dict()
    converted = {}
    for step, ops in align(steps, torch_ops(module), "PyTorch", weighted_only):
        entry = registry.REGISTRY[step.layer.kind]
        if entry.to_torch is None:
            continue
        prefix = _module_prefix(module, ops[0].obj)
        p, s = _weights(params, model_state, step)
        for leaf, value in entry.to_torch(p, s, step.layer, ops[0].obj,
                                          _flatten_from(steps, step.position)).items():
            key = f"{prefix}{leaf}"
            _check_shape(f"{step.name} -> {key}", value.shape, tuple(state[key].shape))
            converted[key] = torch.from_numpy(value.copy())
    for key, value in state.items():  # buffers with no fnlearn counterpart stay as they are
        converted.setdefault(key, value)
    return converted


def variables_from_torch(source, *, model: Layer, input_shape: Sequence[int],
                         weighted_only: bool = False) -> tuple[Params, Params]:
    """``(params, model_state)`` for ``model`` from a torch module, kinds checked in order.

    Args:
      source: a ``torch.nn.Module`` (an ``nn.Sequential`` or a module with its own
        ``forward``, read with ``torch.fx``), or a dict of tensors named as in its
        ``state_dict`` (gradients too), which pairs with the weighted layers only.
      model: the fnlearn model the weights are for.
      input_shape: fnlearn's per-example input shape.
      weighted_only: compare only layers with weights (see ``align``).

    A graph model pairs with the module (or state dict) by name (``named``).
    """
    if "graph" in model.config:
        return named.from_torch(source, model, input_shape)
    steps = walk(model, input_shape)
    # A state dict (or a dict of gradients) names weights only: it pairs with weighted layers.
    pairs = align(steps, torch_ops(source), "PyTorch", weighted_only or isinstance(source, dict))

    def convert(entry, step, obj):
        if entry.from_torch is None:
            return None
        tensors = obj if isinstance(obj, dict) else (dict(obj.named_parameters(recurse=False))
                                                     | dict(obj.named_buffers(recurse=False)))
        return entry.from_torch(tensors, step.layer, obj, _flatten_from(steps, step.position))

    return _collect(model, input_shape, pairs, convert)


def _collect(model, input_shape, pairs, convert) -> tuple[Params, Params]:
    """``(params, state)`` from ``convert(entry, step, obj)`` per layer, each checked against
    the shapes ``model`` initializes."""
    _, like_params, like_state = jax.eval_shape(
        lambda k: init_with_state(model, k, input_shape), jax.random.key(0))
    params, state = {}, {}
    for step, ops in pairs:
        converted = convert(registry.REGISTRY[step.layer.kind], step, ops[0].obj) if ops else None
        if converted is None:
            continue
        p, s = converted
        _check_tree(f"{ops[0].where} -> {step.name}", p, like_params.get(step.name, {}))
        _check_tree(f"{ops[0].where} -> {step.name} state", s, like_state.get(step.name, {}))
        if p:
            params[step.name] = p
        if s:
            state[step.name] = s
    return params, state


def variables_to_keras(params: Params, keras_model, *, model: Layer, input_shape: Sequence[int],
                       model_state: Params | None = None, weighted_only: bool = False):
    """Sets a Keras model's weights from fnlearn's; returns ``keras_model``, modified in place.

    A graph model pairs with the Keras layers by name (``named``), a chain in order."""
    if "graph" in model.config:
        return named.to_keras(params, keras_model, model, input_shape, model_state)
    for step, ops in align(walk(model, input_shape), keras_ops(keras_model), "Keras",
                           weighted_only):
        entry = registry.REGISTRY[step.layer.kind]
        if entry.to_keras is None:
            continue
        layer = ops[0].obj
        weights = entry.to_keras(*_weights(params, model_state, step), step.layer)
        current = layer.get_weights()
        for i, (new, old) in enumerate(zip(weights, current, strict=True)):
            _check_shape(f"{step.name} -> {layer.name} weight {i}", new.shape, old.shape)
        layer.set_weights(weights)
    return keras_model


def variables_from_keras(keras_model, *, model: Layer, input_shape: Sequence[int],
                         weighted_only: bool = False) -> tuple[Params, Params]:
    """``(params, model_state)`` for ``model`` from a Keras model, kinds checked in order (a
    graph model: by name)."""
    if "graph" in model.config:
        return named.from_keras(keras_model, model, input_shape)
    pairs = align(walk(model, input_shape), keras_ops(keras_model), "Keras", weighted_only)
    return _collect(model, input_shape, pairs, lambda entry, step, layer: None
                    if entry.from_keras is None else entry.from_keras(layer.get_weights(),
                                                                      step.layer))


def _module_prefix(root, target) -> str:
    # One layer of a multi-layer nn.LSTM: its weights are the module's own (``_l1`` names).
    target = sequence_walk.recurrent_module(target)
    for name, module in root.named_modules():
        if module is target:
            return f"{name}." if name else ""
    raise ValueError(f"module {target} is not part of the model")


def _check_shape(what: str, shape, expected) -> None:
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{what}: shape {tuple(shape)} does not match {tuple(expected)}")


def _check_tree(what: str, got: dict, like: dict) -> None:
    if set(got) != set(like):
        raise ValueError(f"{what}: weights {sorted(got)} do not match fnlearn's {sorted(like)}")
    for key, value in got.items():
        if isinstance(value, dict):  # a layer made of parts (Bidirectional, attention)
            _check_tree(f"{what}/{key}", value, like[key])
        else:
            _check_shape(f"{what}/{key}", value.shape, like[key].shape)


# --- the older, parameters-only interface --------------------------------------------------


def _infer_model(params: Params) -> tuple[Layer, tuple[int, ...]]:
    """A Dense-only fnlearn model with ``params``'s layer names and shapes (for the old API).

    Automatic names (``dense_0``, ``dense_1``, ...) are put in their numeric order (a
    restored or tree-mapped dict has them in string order); names of your own keep the
    dict's order.
    """
    from fnlearn import nn

    if not isinstance(params, dict):
        raise TypeError(f"params must be the dict that serial's init returns, "
                        f"got {type(params).__name__}")
    if not params:
        raise ValueError("params are empty: pass the fnlearn model's parameters, or model= and "
                         "input_shape=")
    entries = list(params.items())
    if all(re.fullmatch(r"dense_\d+", name) for name, _ in entries):
        entries.sort(key=lambda item: int(item[0].rsplit("_", 1)[1]))
    layers = []
    for name, layer_params in entries:
        if not isinstance(layer_params, dict) or "kernel" not in layer_params or \
                len(layer_params["kernel"].shape) != 2:
            raise ValueError(f"fnlearn layer {name!r} has parameters "
                             f"{sorted(layer_params) if isinstance(layer_params, dict) else '?'};"
                             " pass model= and input_shape= to convert layers other than Dense")
        layers.append(nn.Dense(int(layer_params["kernel"].shape[1]), name=name))
    return nn.serial(*layers), (int(entries[0][1]["kernel"].shape[0]),)


def params_to_torch(params: Params, module, *, model: Layer | None = None,
                    input_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """A state dict for ``module`` holding fnlearn's parameters (kernels transposed).

    With ``model`` and ``input_shape`` every layer kind, activations included, is
    compared in order; with ``params`` alone they must be Dense layers, paired in
    order with the module's ``Linear`` layers.
    """
    if model is None:
        model, input_shape = _infer_model(params)
        return variables_to_torch(params, module, model=model, input_shape=input_shape,
                                  weighted_only=True)
    return variables_to_torch(params, module, model=model, input_shape=input_shape)


def params_from_torch(source, like: Params | None = None, *, model: Layer | None = None,
                      input_shape: Sequence[int] | None = None) -> Params:
    """fnlearn parameters from a torch module (see ``variables_from_torch``).

    Args:
      source: a ``torch.nn.Module``.
      like: fnlearn parameters of a Dense-only target (their names and shapes).
      model, input_shape: the fnlearn model instead: every layer kind, activations
        included, is compared in order, and any registered layer converts.
    """
    if model is None:
        model, input_shape = _infer_model(like)
        return variables_from_torch(source, model=model, input_shape=input_shape,
                                    weighted_only=True)[0]
    return variables_from_torch(source, model=model, input_shape=input_shape)[0]


def params_to_keras(params: Params, keras_model, *, model: Layer | None = None,
                    input_shape: Sequence[int] | None = None):
    """Sets a Keras model's weights from fnlearn parameters (see ``variables_to_keras``)."""
    weighted_only = model is None
    if model is None:
        model, input_shape = _infer_model(params)
    return variables_to_keras(params, keras_model, model=model, input_shape=input_shape,
                              weighted_only=weighted_only)


def params_from_keras(keras_model, like: Params | None = None, *, model: Layer | None = None,
                      input_shape: Sequence[int] | None = None) -> Params:
    """fnlearn parameters from a Keras model (see ``variables_from_keras``)."""
    weighted_only = model is None
    if model is None:
        model, input_shape = _infer_model(like)
    return variables_from_keras(keras_model, model=model, input_shape=input_shape,
                                weighted_only=weighted_only)[0]

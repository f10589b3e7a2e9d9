"""Weights of graph models, paired with PyTorch modules and Keras layers by name.

A chain pairs with its twin layer by layer in order (``convert``); a graph model pairs
by name: the fnlearn layer at parameter path ``("layer1.0", "conv1")`` (a nested model,
then its layer) is the PyTorch module ``layer1.0.conv1`` (its ``state_dict`` entries
``layer1.0.conv1.weight``...) and the Keras layer named ``layer1.0.conv1``. That is how
``from_torch`` and ``from_keras`` name what they import, and how ``to_torch_module`` and
``to_keras_model`` name the twins of a graph model. A Dense right after a Flatten of an
image (element-wise layers between them aside) gets PyTorch's row order, as in a chain.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from fnlearn.nn.core import Layer, init_with_state
from fnlearn.nn.graph import run_init
from fnlearn.parity import registry
from fnlearn.parity.compare import to_numpy
from fnlearn.parity.graphs import ELEMENTWISE_KINDS, IGNORED_KINDS, import_torch


class Leaf(NamedTuple):
    """A layer that holds no other layers, where it sits and what it receives."""

    path: tuple[str, ...]
    layer: Layer
    shape: Any
    flatten_from: tuple[int, ...] | None

    @property
    def name(self) -> str:
        return ".".join(self.path)


def leaves(model: Layer, input_shape, prefix: tuple[str, ...] = ()) -> list[Leaf]:
    """The leaf layers of a graph model (nested graphs and chains opened), each once."""
    if model.kind == "serial":
        out, shape = [], tuple(input_shape)
        for name, child in zip(model.config["names"], model.children):
            out += _leaf_or_more(child, shape, (*prefix, name), None)
            found: dict = {}

            def run(k, child=child, shape=shape, found=found):
                found["shape"], *variables = init_with_state(child, k, shape)
                return variables

            jax.eval_shape(run, jax.random.key(0))
            shape = found["shape"]
        return out
    spec = model.config["graph"]
    record: dict = {}
    jax.eval_shape(lambda k: run_init(spec, k, input_shape, record)[1:], jax.random.key(0))
    out = []
    for step in spec.steps:
        if step.op != "call" or step.call != 0:
            continue
        layer = spec.layers[step.layer]
        shape = jax.tree.unflatten(step.treedef, [record[p] for p in step.parents])
        out += _leaf_or_more(layer, shape, (*prefix, spec.names[step.layer]),
                             _flatten_from(spec, step, record) if layer.kind == "dense" else None)
    return out


def _leaf_or_more(layer, shape, path, flatten_from) -> list[Leaf]:
    if layer.kind == "serial" or "graph" in layer.config:
        return leaves(layer, shape, path)
    return [Leaf(path, layer, shape, flatten_from)]


def _flatten_from(spec, step, record) -> tuple[int, ...] | None:
    """The image shape a Dense's input was flattened from (in fnlearn's (H, W, C) order)."""
    parent = step.parents[0] if len(step.parents) == 1 else None
    while parent is not None and spec.steps[parent].op == "call":
        before = spec.steps[parent]
        layer = spec.layers[before.layer]
        if layer.kind == "flatten":
            shape = record[before.parents[0]]
            channels_first = layer.config.get("channels_first", False)
            return tuple(shape) if len(shape) == 3 and not channels_first else None
        if layer.kind not in ELEMENTWISE_KINDS + IGNORED_KINDS or len(before.parents) != 1:
            return None
        parent = before.parents[0]
    return None


def _entry(leaf: Leaf, framework: str):
    found = registry.REGISTRY.get(leaf.layer.kind)
    if found is None or "flax_module" in leaf.layer.config:
        raise ValueError(f"fnlearn layer {leaf.name!r} ({leaf.layer.kind}) has no {framework} "
                         f"counterpart; supported kinds: {', '.join(sorted(registry.REGISTRY))}")
    return found


def _get(tree: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        tree = tree.get(key, {}) if isinstance(tree, dict) else {}
    return tree


def _put(tree: dict, path: tuple[str, ...], value: dict) -> None:
    if not value:
        return
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _torch_tensors(source, name: str):
    """``(tensors, module)`` of the PyTorch module ``name`` in ``source`` (a module or a dict
    of tensors named as in its ``state_dict``)."""
    if isinstance(source, dict):
        prefix = f"{name}."
        return {key[len(prefix):]: value for key, value in source.items()
                if key.startswith(prefix) and "." not in key[len(prefix):]}, None
    try:
        module = source.get_submodule(name)
    except AttributeError:
        return {}, None
    return (dict(module.named_parameters(recurse=False))
            | dict(module.named_buffers(recurse=False))), module


def from_torch(source, model: Layer, input_shape) -> tuple[dict, dict]:
    """``(params, model_state)`` for the graph ``model`` from PyTorch weights, by name."""
    _, like_params, like_state = jax.eval_shape(
        lambda k: init_with_state(model, k, input_shape), jax.random.key(0))
    params, state = {}, {}
    for leaf in leaves(model, input_shape):
        if not (_get(like_params, leaf.path) or _get(like_state, leaf.path)):
            continue
        entry = _entry(leaf, "PyTorch")
        if entry.from_torch is None:
            continue
        tensors, module = _torch_tensors(source, leaf.name)
        if not tensors:
            raise ValueError(f"fnlearn layer {leaf.name!r} ({leaf.layer.kind}) has weights, "
                             f"but the PyTorch model has no module {leaf.name!r} holding any")
        p, s = entry.from_torch(tensors, leaf.layer, module, leaf.flatten_from)
        _check(leaf.name, p, _get(like_params, leaf.path))
        _check(f"{leaf.name} state", s, _get(like_state, leaf.path))
        _put(params, leaf.path, p)
        _put(state, leaf.path, s)
    return params, state


def to_torch(params, module, model: Layer, input_shape, model_state=None) -> dict:
    """A ``state_dict`` for ``module`` holding the graph ``model``'s weights, by name."""
    torch = import_torch()
    current = module.state_dict()
    converted = {}
    for leaf in leaves(model, input_shape):
        p, s = _get(params, leaf.path), _get(model_state or {}, leaf.path)
        if not (p or s) or _entry(leaf, "PyTorch").to_torch is None:
            continue
        entry = _entry(leaf, "PyTorch")
        _, target = _torch_tensors(module, leaf.name)
        for key, value in entry.to_torch(p, s, leaf.layer, target, leaf.flatten_from).items():
            full = f"{leaf.name}.{key}"
            if full not in current or tuple(current[full].shape) != tuple(value.shape):
                raise ValueError(f"fnlearn layer {leaf.name!r}: {full} {tuple(value.shape)} "
                                 "has no entry of that shape in the PyTorch model")
            converted[full] = torch.from_numpy(value.copy())
    return {key: converted.get(key, value) for key, value in current.items()}


def from_keras(keras_model, model: Layer, input_shape) -> tuple[dict, dict]:
    """``(params, model_state)`` for the graph ``model`` from a Keras model's layers, by name."""
    _, like_params, like_state = jax.eval_shape(
        lambda k: init_with_state(model, k, input_shape), jax.random.key(0))
    params, state = {}, {}
    names = {layer.name for layer in keras_model.layers}
    for leaf in leaves(model, input_shape):
        if not (_get(like_params, leaf.path) or _get(like_state, leaf.path)):
            continue
        entry = _entry(leaf, "Keras")
        if entry.from_keras is None:
            continue
        if leaf.name not in names:
            raise ValueError(f"fnlearn layer {leaf.name!r} has weights, but the Keras model "
                             f"has no layer named {leaf.name!r}")
        p, s = entry.from_keras([to_numpy(w) for w in keras_model.get_layer(
            leaf.name).get_weights()], leaf.layer)
        _check(leaf.name, p, _get(like_params, leaf.path))
        _check(f"{leaf.name} state", s, _get(like_state, leaf.path))
        _put(params, leaf.path, p)
        _put(state, leaf.path, s)
    return params, state


def to_keras(params, keras_model, model: Layer, input_shape, model_state=None):
    """Sets the Keras model's weights from the graph ``model``'s, by name; returns it."""
    for leaf in leaves(model, input_shape):
        p, s = _get(params, leaf.path), _get(model_state or {}, leaf.path)
        if not (p or s) or _entry(leaf, "Keras").to_keras is None:
            continue
        entry = _entry(leaf, "Keras")
        layer = keras_model.get_layer(leaf.name)
        weights = entry.to_keras(p, s, leaf.layer)
        for i, (new, old) in enumerate(zip(weights, layer.get_weights(), strict=True)):
            if tuple(new.shape) != tuple(old.shape):
                raise ValueError(f"fnlearn layer {leaf.name!r} weight {i}: shape "
                                 f"{tuple(new.shape)} does not match Keras's {tuple(old.shape)}")
        layer.set_weights(weights)
    return keras_model


def _check(what: str, got: dict, like: dict) -> None:
    if set(got) != set(like):
        raise ValueError(f"{what}: converted weights {sorted(got)} do not match fnlearn's "
                         f"{sorted(like)}")
    for key, value in got.items():
        if tuple(value.shape) != tuple(like[key].shape):
            raise ValueError(f"{what}/{key}: shape {tuple(value.shape)} does not match "
                             f"fnlearn's {tuple(like[key].shape)}")

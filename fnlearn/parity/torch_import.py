"""``from_torch``: a live ``torch.nn.Module`` as an fnlearn model, through ``torch.fx``.

The module is traced (registered module types stay single operations) and run once on
the report's random batch to learn every value's shape. Each node then becomes an
fnlearn layer call: modules and functions through ``builders.TORCH_BUILDERS``, ``+``,
``*``, ``-`` and ``torch.cat`` through the merging layers, a tuple output's items
through item nodes. A module called twice is one layer called twice (shared weights).

PyTorch images are NCHW and fnlearn's NHWC: a 4-D value is held channels-last, a
dimension argument (``torch.cat(..., dim=1)``) is moved with it, a Flatten whose
features go (through element-wise steps) into a Linear flattens (H, W, C) and the
Linear's rows are permuted, any other Flatten of an image flattens in PyTorch's
(C, H, W) order. A ``ZeroPad2d`` right before a convolution becomes its padding;
``AdaptiveAvgPool2d(1)`` then a flatten is one ``GlobalAveragePooling2D``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import jax
import numpy as np

from fnlearn import nn
from fnlearn.nn.node import Input
from fnlearn.parity import registry, torch_items
from fnlearn.parity.builders import TORCH_BUILDERS, torch_layer
from fnlearn.parity.compare import to_numpy
from fnlearn.parity.graphs import (
    ELEMENTWISE_KINDS,
    TORCH_METHODS,
    TORCH_MODULES,
    Op,
    function_config,
    import_torch,
    module_kind,
    supported_torch,
    torch_functions,
)
from fnlearn.parity.importer import (
    Call,
    Imported,
    build_model,
    checked,
    named,
    place_weights,
    report,
)

_MERGES = {"add": nn.Add, "multiply": nn.Multiply, "subtract": nn.Subtract}
_SKIPPED = ("size", "dim", "contiguous")  # methods that compute no tensor value of their own


def _function_kinds(torch) -> dict:
    kinds = dict(torch_functions(torch))
    kinds.update({operator.add: "add", operator.iadd: "add", torch.add: "add",
                  operator.mul: "multiply", operator.imul: "multiply", torch.mul: "multiply",
                  operator.sub: "subtract", torch.sub: "subtract", torch.cat: "concatenate",
                  torch.concat: "concatenate", operator.getitem: "getitem",
                  torch.mean: "mean", torch.nn.functional.adaptive_avg_pool2d: "adaptive_pool",
                  getattr: "getattr"})
    return kinds


_METHOD_KINDS = {**TORCH_METHODS, "add": "add", "mul": "multiply", "sub": "subtract",
                 "mean": "mean"}


def _where(node) -> str:
    return f"node {node.name!r} (target {getattr(node.target, '__name__', node.target)})"


def _shape(node) -> tuple | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _fnlearn_shape(torch_shape: Sequence[int]) -> tuple[int, ...]:
    """A per-example PyTorch shape in fnlearn's layout: (C, H, W) -> (H, W, C)."""
    shape = tuple(int(d) for d in torch_shape)
    return (*shape[1:], shape[0]) if len(shape) == 3 else shape


def _axis(dim: int, rank: int) -> int:
    """PyTorch's ``dim`` of a rank-``rank`` value as fnlearn's axis (counting the batch)."""
    dim = dim % rank
    if rank == 4:
        return {1: -1, 2: 1, 3: 2}.get(dim, 0)
    return dim


class _Reader:
    """Reads a traced module node by node into fnlearn calls."""

    def __init__(self, torch, module, graph):
        self.torch, self.graph = torch, graph
        self.submodules = dict(module.named_modules())
        self.functions = _function_kinds(torch)
        self.calls_of = {}  # module target -> how many nodes call it
        for node in graph.nodes:
            if node.op == "call_module":
                self.calls_of[node.target] = self.calls_of.get(node.target, 0) + 1
        self.env, self.layers, self.weights, self.calls = {}, {}, {}, []
        self.pad, self.flatten_from, self.linear_follows, self.passthrough = {}, {}, set(), set()

    def kind(self, node) -> str | None:
        if node.op == "call_module":
            return module_kind(self.submodules[node.target])
        if node.op == "call_function":
            return self.functions.get(node.target)
        if node.op == "call_method":
            return "skip" if node.target in _SKIPPED else _METHOD_KINDS.get(node.target)
        return None

    def tensors(self, node) -> list:
        return [a for a in node.all_input_nodes if self.env.get(a) is not None]

    def only_user(self, node):
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def plan(self) -> None:
        """Folds paddings into convolutions and marks flattens a Linear follows."""
        for node in self.graph.nodes:
            kind = self.kind(node)
            user = self.only_user(node)
            if kind == "zero_pad" and user is not None and self.kind(user) == "conv2d" \
                    and node.op == "call_module" and user.op == "call_module" \
                    and self.calls_of[user.target] == 1:
                left, right, top, bottom = self.submodules[node.target].padding
                self.pad[user] = ((top, bottom), (left, right))
                self.passthrough.add(node)
            if kind == "flatten":
                follower = user
                while follower is not None and self.kind(follower) in ELEMENTWISE_KINDS:
                    follower = self.only_user(follower)
                if follower is not None and self.kind(follower) == "linear" \
                        and self.calls_of[follower.target] == 1:
                    self.linear_follows.add(node)
                    shape = _shape(node.all_input_nodes[0]) or ()
                    if len(shape) == 4:
                        self.flatten_from[follower] = _fnlearn_shape(shape[1:])
        self.extra = torch_items.plan_last_steps(self)  # node -> settings for its builder

    def call(self, layer, args, node, module=None) -> None:
        """``layer`` called on ``args``; a module's layer is built and converted once."""
        if isinstance(layer, list):  # builders.Part's: the module is their chain
            torch_items.call_parts(self, layer, args, node, module)
            return
        if module is not None:
            key = id(module)
            if key in self.layers:
                layer = self.layers[key]
            else:
                name = None if node.target.replace(".", "").isdigit() else node.target
                layer = self.layers[key] = named(layer, name)
                self.convert(layer, module, node)
        out = layer(args)
        self.calls.append(Call(layer, args, out))
        self.env[node] = out

    def convert(self, layer, module, node) -> None:
        entry = registry.REGISTRY.get(layer.kind)
        if entry is None or entry.from_torch is None:
            return
        tensors = (dict(module.named_parameters(recurse=False))
                   | dict(module.named_buffers(recurse=False)))
        self.weights[id(layer)] = entry.from_torch(tensors, layer, module,
                                                   self.flatten_from.get(node))

    def read(self, node) -> None:
        where, kind = _where(node), self.kind(node)
        if node in self.passthrough:
            self.env[node] = self.env[node.all_input_nodes[0]]
            return
        if kind == "skip" or (kind == "getattr" and node.args[1] in ("shape", "ndim")):
            self.env[node] = None
            return
        if kind is None:
            what = (type(self.submodules[node.target]).__name__ if node.op == "call_module"
                    else "operation")
            raise ValueError(f"unsupported {'operation ' + what if what != 'operation' else what}"
                             f" at {where}; supported: {', '.join(supported_torch())}, and "
                             "+, -, *, torch.cat, mean over height and width")
        tensors = self.tensors(node)
        if kind == "getitem":
            if self.env.get(node.args[0]) is None:  # an item of a shape
                self.env[node] = None
                return
            torch_items.read_item(self, node, where)
            return
        if kind in _MERGES or kind == "concatenate":
            self.merge(node, kind, tensors, where)
            return
        if len(tensors) != 1:
            raise ValueError(f"{where} takes {len(tensors)} tensor inputs; fnlearn imports "
                             "it with one")
        x, shape = self.env[tensors[0]], _shape(tensors[0])
        module = self.submodules[node.target] if node.op == "call_module" else None
        layer = self.special(node, kind, shape, where)
        if layer is False:
            self.env[node] = x
            return
        if layer is None:
            config = {} if module is not None else function_config(kind, node)
            config.update(self.extra.get(node, {}))
            if kind == "flatten":
                config["linear_follows"] = node in self.linear_follows
            if kind in ("conv2d", "zero_pad") and node in self.pad:
                config["pad"] = self.pad[node]
            if kind == "batch_norm" and len(shape) != 2 and len(shape) != 4:
                raise ValueError(f"BatchNorm at {where} normalizes a value of shape {shape}: "
                                 "fnlearn imports it on (N, C) and (N, C, H, W) values")
            layer = torch_layer(Op(kind, module, where, config))
        if layer is None:
            self.env[node] = x
            return
        self.call(layer, x, node, module)

    def special(self, node, kind, shape, where):
        """The layer of an operation whose meaning depends on shapes (None: the builder's;
        False: the identity)."""
        out = _shape(node)
        if kind == "flatten":
            if out == (shape[0], math.prod(shape[1:])):
                return False if len(shape) == 2 else None
            if (len(shape) != 4 or shape[1] == 1) and out is not None and len(out) != 4:
                return nn.Reshape(out[1:])
            raise ValueError(f"{where} reshapes {shape} to {out}: only a flatten to "
                             "(batch, features) is imported for images")
        if kind in ("softmax", "log_softmax"):
            dim = function_config(kind, node).get("dim") if node.op != "call_module" else \
                self.submodules[node.target].dim
            if dim is None or _axis(dim, len(shape)) not in (-1, len(shape) - 1):
                raise ValueError(f"{kind} at {where} is over dim {dim} of {shape}: fnlearn's "
                                 "is over the features (the channels of an image)")
            return None
        if kind == "spatial_dropout" and len(shape) != 4:  # PyTorch drops single features
            return nn.Dropout(float(self.submodules[node.target].p if node.op == "call_module"
                                    else function_config(kind, node)["p"]))
        if kind == "mean" and torch_items.time_mean(node, shape) is not None:
            return torch_items.time_mean(node, shape)
        if kind in ("global_avg_pool2d", "adaptive_pool", "mean"):
            return self.pooling(node, kind, shape, out, where)
        return None

    def pooling(self, node, kind, shape, out, where):
        if kind == "mean":
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = {d % 4 for d in (dims if isinstance(dims, list | tuple) else [dims])} \
                if dims is not None and len(shape) == 4 else None
            if dims != {2, 3}:
                raise ValueError(f"mean at {where} is over {dims}: fnlearn imports the mean "
                                 "over height and width of an image")
        elif kind == "adaptive_pool" and out[2:] != (1, 1):
            return nn.AdaptiveAvgPool2D(out[2:])
        user = self.only_user(node)
        if len(out) == 2:
            return nn.GlobalAveragePooling2D()
        if user is not None and self.kind(user) == "flatten":
            self.passthrough.add(user)
            return nn.GlobalAveragePooling2D()
        return nn.AdaptiveAvgPool2D((1, 1))

    def merge(self, node, kind, tensors, where) -> None:
        operands = [a for a in node.args if not isinstance(a, list | tuple)]
        if kind == "concatenate":
            items = node.args[0]
            if any(self.env.get(a) is None for a in items):
                raise ValueError(f"{where} concatenates a value that is not a tensor")
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            rank = len(_shape(items[0]))
            axis = _axis(dim, rank)
            if axis == 0:
                raise ValueError(f"{where} concatenates along the batch: not supported")
            self.call(nn.Concatenate(axis), [self.env[a] for a in items], node)
            return
        if len(tensors) != 2 or len(operands) != 2 or node.kwargs.get("alpha", 1) != 1:
            raise ValueError(f"{where} combines a tensor with a constant (or alpha=): fnlearn "
                             f"imports {kind} of two tensors")
        shapes = [_shape(a) for a in node.args]
        if shapes[0] != shapes[1]:
            raise ValueError(f"{where} broadcasts {shapes[0]} with {shapes[1]}: fnlearn imports "
                             f"{kind} of two tensors of one shape")
        self.call(_MERGES[kind](), [self.env[a] for a in node.args], node)


def _trace(torch, module):
    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualified_name):
            return type(m).__name__ in TORCH_MODULES or super().is_leaf_module(m, qualified_name)

    try:
        graph = Tracer().trace(module)
    except Exception as error:  # noqa: BLE001 - re-raised naming what could not be traced
        raise ValueError(f"cannot trace {type(module).__name__} with torch.fx "
                         f"(data-dependent control flow?): {error}") from error
    return torch.fx.GraphModule(module, graph)


def _input_shapes(placeholders, input_shape) -> list[tuple[int, ...]]:
    if len(placeholders) == 1:
        return [tuple(int(d) for d in input_shape)]
    names = [p.target for p in placeholders]
    if isinstance(input_shape, dict):
        if set(input_shape) != set(names):
            raise ValueError(f"input_shape must have the forward's arguments {names} as keys, "
                             f"got {sorted(input_shape)}")
        return [tuple(input_shape[n]) for n in names]
    if len(input_shape) != len(names) or not all(isinstance(s, list | tuple)
                                                  for s in input_shape):
        raise ValueError(f"the module's forward takes {len(names)} inputs {names}: give "
                         "input_shape as a tuple (or dict) of their per-example shapes")
    return [tuple(s) for s in input_shape]


def from_torch(module, input_shape, *, batch_size: int = 8, seed: int = 0,
               rtol: float = 1e-5, strict: bool = True) -> Imported:
    """The fnlearn model, parameters and state computing what ``module`` computes.

    Args:
      module: a ``torch.nn.Module`` (``nn.Sequential`` or a ``forward`` of your own,
        read with ``torch.fx``): chains, residual adds, ``torch.cat``, modules called
        twice, several inputs and outputs (tuple or dict).
      input_shape: the per-example input shape in PyTorch's layout (``(1, 28, 28)``); for
        a ``forward`` of several arguments a tuple or dict (by argument name) of them:
        the model then takes a tuple or a dict of inputs.
      batch_size, seed: the random batch the report runs both models on.
      rtol: the report's tolerance, relative to the largest output.
      strict: raise when the report fails; False warns and returns the import anyway.

    Returns:
      ``Imported(model, params, model_state, report)``: an ``nn.serial`` for a chain, an
      ``nn.Model`` (NHWC image inputs, one per argument) otherwise.

    Raises:
      ValueError: an unsupported operation (the node is named, with what is supported),
        an input_shape that does not fit the forward.
      ImportMismatchError: the report failed (with ``strict``).
    """
    torch = import_torch()
    gm = _trace(torch, module)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    shapes = _input_shapes(placeholders, input_shape)
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(batch_size, *s)).astype(np.float32) for s in shapes]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            torch.fx.passes.shape_prop.ShapeProp(gm).propagate(*map(torch.from_numpy, xs))
            reference = module(*map(torch.from_numpy, xs))
    finally:
        module.train(was_training)
    reader = _Reader(torch, module, gm.graph)
    reader.plan()
    for node, shape in zip(placeholders, shapes):
        reader.env[node] = Input(_fnlearn_shape(shape), name=node.target)
    outputs = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            outputs = torch.fx.node.map_arg(node.args[0], lambda n: reader.env[n])
            break
        if node.op == "get_attr":
            raise ValueError(f"{_where(node)} reads a tensor attribute of the module directly: "
                             "only modules and functions of tensors are imported")
        reader.read(node)
    by_name = isinstance(input_shape, dict)
    nodes = [reader.env[p] for p in placeholders]
    inputs = nodes[0] if len(nodes) == 1 else (
        {p.target: n for p, n in zip(placeholders, nodes)} if by_name else tuple(nodes))
    if isinstance(outputs, list):
        outputs = tuple(outputs)
    model = build_model(inputs, outputs, reader.calls)
    fn_shapes = [_fnlearn_shape(s) for s in shapes]
    fn_shapes = fn_shapes[0] if len(shapes) == 1 else (
        {p.target: s for p, s in zip(placeholders, fn_shapes)} if by_name else tuple(fn_shapes))
    params, state = place_weights(model, fn_shapes, reader.weights)
    references = [_nhwc(to_numpy(r)) for r in jax.tree.leaves(
        reference, is_leaf=lambda v: isinstance(v, torch.Tensor))]
    x = [_nhwc(a) for a in xs]
    x = x[0] if len(x) == 1 else (
        {p.target: a for p, a in zip(placeholders, x)} if by_name else tuple(x))
    return checked(Imported(model, params, state, report(
        type(module).__name__, xs[0].shape, references, model, params, state, x, rtol)), strict)


def _nhwc(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if array.ndim == 4 else array


__all__ = ["TORCH_BUILDERS", "from_torch"]

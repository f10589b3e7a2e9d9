"""Symbolic values of a graph model: what ``nn.Input`` returns and what calling a layer on it gives.

A ``Node`` stands for an array that does not exist yet, as a Keras ``KerasTensor`` or a
``torch.fx`` node does. There are three kinds:

* ``"input"``: a model input (``nn.Input``), with an optional per-example shape;
* ``"call"``: a layer called on a structure of nodes (``Dense(10)(x)``, ``Add()([a, b])``);
* ``"item"``: one output of a call with several (``a, b = two_heads(x)``, ``out["a"]``).

A node only ever points at nodes made before it, so a graph of nodes has no cycle.
Nodes compare by identity: two calls of one layer are two nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax


@dataclass(frozen=True, eq=False)
class Node:
    """A symbolic value: a model input, a layer's output, or one item of a layer's outputs.

    Attributes:
      op: ``"input"``, ``"call"`` or ``"item"``.
      layer: the layer called (``"call"``), else None.
      args: the nodes it was called on: one node, or a tuple, list or dict of them.
      name: an input's name (None: named by its place among the model's inputs).
      shape: an input's per-example shape (None: any; ``None`` entries: any size).
      parent, index: for ``"item"``, the node and the key or position taken from it.
    """

    op: str
    layer: Any = None
    args: Any = None
    name: str | None = None
    shape: tuple | None = None
    parent: Node | None = None
    index: Any = None

    def __getitem__(self, index) -> Node:
        """One output of a layer with several (``outputs["mean"]``, ``outputs[0]``)."""
        return Node("item", parent=self, index=index)

    def __iter__(self):
        raise TypeError("a graph node has no length until its shapes are known: take its "
                        "outputs by index (out[0], out['a']), or unpack the outputs of an "
                        "nn.Model, whose structure is known")

    def __repr__(self) -> str:
        if self.op == "input":
            return f"Input(shape={self.shape}, name={self.name!r})"
        if self.op == "item":
            return f"{self.parent!r}[{self.index!r}]"
        return f"<{self.layer.kind} call>"


def Input(shape: Sequence[int | None] | None = None, *, name: str | None = None) -> Node:
    """A model input (Keras ``keras.Input``): call layers on it, then pass it to ``nn.Model``.

    Args:
      shape: the per-example shape (no batch axis), checked when the model is
        initialized; None (or a None entry) accepts any.
      name: the input's name, in summaries and messages (dict inputs use their keys).
    """
    if shape is not None:
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        try:
            shape = tuple(None if d is None else int(d) for d in shape)
        except (TypeError, ValueError) as error:
            raise TypeError(f"Input shape must be a tuple of ints (per example, no batch "
                            f"axis), got {shape!r}") from error
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"Input name must be a non-empty string, got {name!r}")
    return Node("input", name=name, shape=shape)


def is_node(value) -> bool:
    return isinstance(value, Node)


def call(layer, args) -> Any:
    """The node(s) of ``layer`` called on ``args`` (a node, or a tuple, list or dict of them).

    Returns one node, or, when the layer declares several outputs (an ``nn.Model`` with
    tuple or dict outputs: ``config["output_structure"]``), a tuple or dict of item nodes.
    """
    leaves = jax.tree.leaves(args, is_leaf=is_node)
    if not any(map(is_node, leaves)):
        raise TypeError(f"{layer.kind} was called on {type(args).__name__}: calling a layer "
                        "builds a graph from nn.Input nodes; to run a layer on arrays use "
                        "nn.apply(layer, params, x) (or layer.apply)")
    for leaf in leaves:
        if not is_node(leaf):
            raise TypeError(f"{layer.kind} was called on a mix of graph nodes and "
                            f"{type(leaf).__name__}: every input of a layer in a graph must "
                            "come from nn.Input or another layer")
    out = Node("call", layer=layer, args=args)
    structure = layer.config.get("output_structure")
    if structure is None:
        return out
    kind, keys = structure
    if kind == "dict":
        return {key: out[key] for key in keys}
    return tuple(out[i] for i in range(keys))

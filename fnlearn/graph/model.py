"""A model's layer graph as a ``Graph`` the drawing code renders: one box per layer call.

``model_graph(model, input_shape)`` turns ``fnlearn.nn.describe``'s rows (a graph
model's steps, a ``serial``'s layers) into ``Node`` values: inputs, calls and outputs,
each labelled with its layer kind, parameter count and per-example output shape, so
``render(model_graph(model, shape), "model.png")`` draws what ``nn.summary`` lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fnlearn.graph.drawing import render
from fnlearn.graph.tracing import Graph, Node
from fnlearn.nn.core import Layer, as_shape
from fnlearn.nn.graph import display_kind
from fnlearn.nn.summary import describe, format_shape


def _is_shape(shape) -> bool:
    return isinstance(shape, tuple) and all(isinstance(d, int) for d in shape)


def model_graph(model: Layer, input_shape: Sequence[int] | Any) -> Graph:
    """The layer graph of ``model`` for per-example ``input_shape``, as a drawable ``Graph``.

    Nodes are named as the model's calls (``dense_0``; an input's name), their ``op`` is
    the layer kind with its parameter count, their ``shape`` the per-example output shape
    (several outputs are spelt out in ``op``). The graph has no jaxpr.
    """
    rows = describe(model, input_shape)
    nodes = []
    if rows and rows[0].kind != "input":  # a serial or a single layer: draw its input too
        shape = as_shape(input_shape)
        nodes.append(Node("input", "input", None, (), shape if _is_shape(shape) else (), ""))
        rows[0] = rows[0]._replace(inputs=("input",))
    for row in rows:
        if row.kind == "input":
            nodes.append(Node("input", row.name, None, (), row.shape, ""))
            continue
        op = display_kind(row.kind) + (f", {row.params:,} params" if row.params else "")
        shape = row.shape
        if not _is_shape(shape):
            op, shape = f"{op}\n{format_shape(shape)}", ()
        nodes.append(Node("output" if row.output else "operation", row.name, op, row.inputs,
                          shape, ""))
    return Graph(tuple(nodes), None)


def render_model(model: Layer, input_shape: Sequence[int] | Any, path: str | Path,
                 engine: str = "auto") -> Path:
    """Draws ``model``'s layer graph to ``path`` (.png, .svg or .pdf); see ``render``."""
    return render(model_graph(model, input_shape), path, engine)

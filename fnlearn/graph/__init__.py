"""The static graph of a pure function: traced into nodes (``tracing``), drawn (``drawing``).

- ``tracing``: ``trace`` (a ``Graph`` of ``Node`` values with shapes, dtypes and, for
  concrete arguments, values), ``stablehlo_text``, ``hlo_text``, ``cost_analysis``.
- ``drawing``: ``to_dot`` (Graphviz DOT text) and ``render`` (PNG/SVG/PDF by Graphviz's
  ``dot``, or by matplotlib's ``draw`` without it).
- ``model``: ``model_graph`` (a model's layers as a ``Graph``) and ``render_model``.
"""

from fnlearn.graph.drawing import GraphvizNotFoundError, draw, node_label, render, to_dot
from fnlearn.graph.model import model_graph, render_model
from fnlearn.graph.tracing import (
    Graph,
    Node,
    cost_analysis,
    format_value,
    hlo_text,
    stablehlo_text,
    trace,
)

__all__ = ["Graph", "GraphvizNotFoundError", "Node", "cost_analysis", "draw", "format_value",
           "hlo_text", "model_graph", "node_label", "render", "render_model", "stablehlo_text",
           "to_dot", "trace"]

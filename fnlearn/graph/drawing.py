"""Pictures of a traced graph: Graphviz DOT text, and a PNG/SVG/PDF drawn by ``dot`` or matplotlib.

``to_dot`` writes one box per node and one arrow per data edge; ``render`` hands it to
Graphviz's ``dot`` when it is installed and otherwise draws the same boxes with
matplotlib (``draw``). The matplotlib layout is layered, as ``dot -Grankdir=LR`` lays it
out: a node's column is the length of the longest path reaching it from a node without
inputs, and each column is ordered by the mean row of the nodes feeding it, which keeps
most arrows short and uncrossed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from fnlearn.graph.tracing import Graph, Node, format_value

_DOT_STYLE = {
    "input": 'shape=ellipse, style=filled, fillcolor="#dbeafe"',
    "constant": 'shape=box, style=filled, fillcolor="#e5e7eb"',
    "operation": 'shape=box, style="rounded,filled", fillcolor="#fef3c7"',
    "output": 'shape=box, style="rounded,filled", peripheries=2, fillcolor="#dcfce7"',
}


def to_dot(graph: Graph, title: str = "graph") -> str:
    """Return the graph as Graphviz DOT source: one box per node, one arrow per data edge.

    Args:
      graph: a ``Graph`` from ``trace``.
      title: the DOT graph's label.

    Returns:
      DOT text, renderable with ``dot -Tpng`` (see ``render``).
    """
    ids = {node.name: f"n{i}" for i, node in enumerate(graph.nodes)}
    lines = [f'digraph "{_escape(title)}" {{', "  rankdir=LR;",
             '  node [fontname="Helvetica", fontsize=11];']
    for node in graph.nodes:
        text = "\\n".join(_escape(part) for part in node_label(node))
        lines.append(f'  {ids[node.name]} [label="{text}", {_DOT_STYLE[node.kind]}];')
    for node in graph.nodes:
        lines += [f"  {ids[source]} -> {ids[node.name]};" for source in node.inputs]
    lines.append("}")
    return "\n".join(lines) + "\n"


def node_label(node: Node) -> list[str]:
    """The lines a picture shows for a node: name, op, small values, dtype and shape."""
    label = [node.name] + (node.op.split("\n") if node.op and node.op != node.name else [])
    if node.value is not None and node.value.size <= 4:
        label.append(format_value(node.value))
    if not node.dtype and not node.shape:  # a model's layer with several outputs: in its op
        return label
    return label + [f"{node.dtype}{list(node.shape)}"]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class GraphvizNotFoundError(RuntimeError):
    """Raised by ``render`` when the Graphviz ``dot`` program is not installed."""


def render(graph: Graph, path: str | Path, engine: str = "auto") -> Path:
    """Draw the graph to an image file, with Graphviz's ``dot`` or, without it, matplotlib.

    Both draw the same boxes and labels (see ``to_dot``), inputs on the left, outputs on the
    right; ``dot`` routes the arrows more neatly.

    Args:
      graph: a ``Graph`` from ``trace``.
      path: output file; its suffix picks the format (.png, .svg or .pdf).
      engine: "graphviz", "matplotlib", or "auto" (Graphviz if ``dot`` is on PATH).

    Returns:
      The path written.

    Raises:
      GraphvizNotFoundError: ``engine="graphviz"`` and ``dot`` is not on PATH.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"render writes .png, .svg or .pdf files, got {str(path)!r}")
    if engine not in ("auto", "graphviz", "matplotlib"):
        raise ValueError(f"engine must be 'auto', 'graphviz' or 'matplotlib', got {engine!r}")
    dot = shutil.which("dot") if engine != "matplotlib" else None
    if dot is None and engine == "graphviz":
        raise GraphvizNotFoundError("Graphviz 'dot' program not found: install it with "
                                    "`apt-get install graphviz` or `brew install graphviz`, "
                                    "or use engine='matplotlib'")
    path.parent.mkdir(parents=True, exist_ok=True)
    if dot is None:
        return draw(graph, path)
    done = subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=to_dot(graph),
                          text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dot failed writing {path}: {done.stderr.strip()}")
    return path


# Same colours and shapes as the DOT output (_DOT_STYLE).
_STYLE = {
    "input": {"boxstyle": "ellipse,pad=0.35", "facecolor": "#dbeafe", "linewidth": 1.0},
    "constant": {"boxstyle": "square,pad=0.35", "facecolor": "#e5e7eb", "linewidth": 1.0},
    "operation": {"boxstyle": "round,pad=0.35", "facecolor": "#fef3c7", "linewidth": 1.0},
    "output": {"boxstyle": "round,pad=0.35", "facecolor": "#dcfce7", "linewidth": 2.2},
}
_FONT_SIZE = 10
_CHAR_WIDTH = 0.085  # inches per character at _FONT_SIZE, a little generous
_LINE_HEIGHT = 0.19  # inches per text line at _FONT_SIZE


def layers(graph: Graph) -> list[list[str]]:
    """Group node names into columns, sources first, each column ordered to limit crossings.

    Args:
      graph: a traced ``Graph``; its nodes come in execution order, so inputs precede users.

    Returns:
      Columns of node names, left to right.
    """
    depth: dict[str, int] = {}
    for node in graph.nodes:
        depth[node.name] = 1 + max((depth[name] for name in node.inputs), default=-1)
    columns: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in graph.nodes:
        columns[depth[node.name]].append(node.name)
    row: dict[str, float] = {name: float(i) for i, name in enumerate(columns[0])} if columns else {}
    inputs = {node.name: node.inputs for node in graph.nodes}
    for column in columns[1:]:
        # Stable sort by the mean row of the inputs: ties keep execution order.
        column.sort(key=lambda name: sum(row[i] for i in inputs[name]) / len(inputs[name]))
        row.update((name, float(i)) for i, name in enumerate(column))
    return columns


def draw(graph: Graph, path: str | Path, dpi: int = 150) -> Path:
    """Draw the graph with matplotlib: labelled boxes in layered columns, arrows along edges.

    Args:
      graph: a traced ``Graph``.
      path: image file; matplotlib picks the format from the suffix (.png, .svg, .pdf).
      dpi: resolution of raster formats.

    Returns:
      The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    labels = {node.name: "\n".join(node_label(node)) for node in graph.nodes}
    kinds = {node.name: node.kind for node in graph.nodes}
    columns = layers(graph)
    widest = max((len(line) for text in labels.values() for line in text.split("\n")), default=1)
    tallest = max((text.count("\n") + 1 for text in labels.values()), default=1)
    column_width = widest * _CHAR_WIDTH + 1.0
    row_height = tallest * _LINE_HEIGHT + 0.6
    width = max(len(columns), 1) * column_width
    height = max((len(column) for column in columns), default=1) * row_height

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, width)
    axes.set_ylim(0, height)
    axes.axis("off")
    boxes = {}
    for x, column in enumerate(columns):
        top = (height + len(column) * row_height) / 2  # centre each column vertically
        for y, name in enumerate(column):
            boxes[name] = axes.text(
                (x + 0.5) * column_width, top - (y + 0.5) * row_height, labels[name],
                ha="center", va="center", fontsize=_FONT_SIZE, family="sans-serif",
                bbox={**_STYLE[kinds[name]], "edgecolor": "#374151"}, zorder=2,
            )
    # Arrows run from the right side of a box to the left side of the next, as dot's do; the
    # boxes' sizes are known only once drawn. Beneath the opaque boxes, arrows never cross text.
    figure.canvas.draw()
    to_data = axes.transData.inverted()
    extents = {name: to_data.transform_bbox(box.get_bbox_patch().get_window_extent())
               for name, box in boxes.items()}
    for node in graph.nodes:
        target = extents[node.name]
        for source_name in node.inputs:
            source = extents[source_name]
            axes.annotate(
                "", xy=(target.x0, (target.y0 + target.y1) / 2),
                xytext=(source.x1, (source.y0 + source.y1) / 2), zorder=1,
                arrowprops={"arrowstyle": "-|>", "color": "#374151", "shrinkA": 0, "shrinkB": 0,
                            "mutation_scale": 12},
            )
    figure.savefig(path, dpi=dpi)
    return path

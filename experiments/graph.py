"""The article's first program: a tiny computational graph, c = a + b.

TensorFlow builds the graph node by node (``tf.constant``, ``tf.add``); in JAX the
graph is what tracing a plain function records. Prints each node with its
value, shape and dtype, and writes the picture under --out.

    python experiments/graph.py [--out out/graph] [--show jaxpr|stablehlo|hlo|cost]
"""

import argparse
from pathlib import Path

import jax.numpy as jnp

from fnlearn.graph import (
    Graph,
    cost_analysis,
    hlo_text,
    render,
    stablehlo_text,
    to_dot,
    trace,
)

VIEWS = ("jaxpr", "stablehlo", "hlo", "cost")


def add(a, b):
    """The whole model: c = a + b."""
    return a + b


def main(argv: list[str] | None = None) -> Graph:
    """Trace c = a + b at a = 2.0, b = 3.0, print its nodes, write its picture.

    Args:
      argv: arguments, ``None`` for ``sys.argv[1:]``.

    Returns:
      The traced graph.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/graph", help="folder for graph.dot and graph.png")
    parser.add_argument(
        "--show",
        action="append",
        choices=VIEWS,
        default=[],
        help="also print a lower-level view of the function (repeatable)",
    )
    args = parser.parse_args(argv)

    a, b = jnp.float32(2.0), jnp.float32(3.0)
    graph = trace(add, a, b, output_names=["c"])
    print("Computational Graph Nodes:")
    for node in graph.nodes:
        print(node)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph.dot").write_text(to_dot(graph, title="c = a + b"))
    # Drawn by Graphviz's dot when installed, else by matplotlib.
    print(f"Graph picture: {render(graph, out / 'graph.png')}")

    for view in args.show:
        print(f"\n--- {view} ---")
        if view == "jaxpr":
            print(graph.jaxpr)
        elif view == "stablehlo":
            print(stablehlo_text(add, a, b))
        elif view == "hlo":
            print(hlo_text(add, a, b))
        else:
            for key, value in sorted(cost_analysis(add, a, b).items()):
                print(f"{key}: {value:g}")
    return graph


if __name__ == "__main__":
    main()

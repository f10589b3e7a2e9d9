"""A model described layer by layer: ``describe`` (rows as data) and ``summary`` (Keras's table).

Shapes are computed abstractly (``jax.eval_shape``): nothing is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax

from fnlearn.nn.core import Layer, abstract_init, as_shape, count_params
from fnlearn.nn.graph import display_kind, run_init


class Row(NamedTuple):
    """One layer call of a model.

    Attributes:
      name: the call's label (``dense_0``; ``dense_0 (call 2)`` for a shared layer's
        second call; an input's name).
      kind: the layer kind (``"dense"``), or ``"input"``.
      inputs: the names of the rows it reads.
      connected: the same as Keras's "Connected to" (``branches[0]`` for one output of a
        row with several).
      shape: its per-example output shape (a tuple, or a tuple or dict of them).
      params, state: the parameters and state scalars it owns (0 for a repeated call).
      output: whether it is one of the model's outputs.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    connected: tuple[str, ...]
    shape: Any
    params: int
    state: int
    output: bool


def describe(model: Layer, input_shape: Sequence[int] | Any) -> list[Row]:
    """The model's calls in run order: a graph model's steps, a ``serial``'s layers in turn,
    or a single layer."""
    input_shape = as_shape(input_shape)
    key = jax.random.key(0)
    spec = model.config.get("graph")
    if spec is not None:
        record: dict[int, Any] = {}

        def variables(k):
            _, params, state = run_init(spec, k, input_shape, record)
            return params, state

        params, state = jax.eval_shape(variables, key)
        rows = []

        def source(i):  # the row an item of a call's outputs comes from
            while spec.steps[i].op == "item":
                i = spec.steps[i].parents[0]
            return i

        outputs = {source(i) for i in spec.outputs}

        for i, step in enumerate(spec.steps):
            if step.op == "item":
                continue
            name = None if step.op == "input" else spec.names[step.layer]
            owns = step.op == "call" and step.call == 0
            kind = "input" if step.op == "input" else spec.layers[step.layer].kind
            counted = (params.get(name, {}), state.get(name, {})) if owns else ({}, {})
            rows.append(Row(step.label, kind,
                            tuple(spec.steps[source(p)].label for p in step.parents),
                            tuple(spec.steps[p].label for p in step.parents), record[i],
                            count_params(counted[0]), count_params(counted[1]), i in outputs))
        return rows
    layers = model.children if model.kind == "serial" else (model,)
    names = model.config["names"] if model.kind == "serial" else [model.name or model.kind]
    rows, shape, seen = [], input_shape, set()
    previous = ()
    for position, (name, layer) in enumerate(zip(names, layers)):
        shape, params, state = abstract_init(layer, key, shape)
        label = name if name not in seen else f"{name} (call {names[:position].count(name) + 1})"
        rows.append(Row(label, layer.kind, previous, previous, shape,
                        0 if name in seen else count_params(params),
                        0 if name in seen else count_params(state), position == len(layers) - 1))
        seen.add(name)
        previous = (label,)
    return rows


def format_shape(shape) -> str:
    """A per-example shape as Keras prints a batch's: ``(None, 28, 28)``; lists for several."""
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k!r}: {format_shape(v)}" for k, v in shape.items()) + "}"
    if isinstance(shape, tuple) and shape and all(isinstance(s, tuple | dict) for s in shape):
        return "[" + ", ".join(format_shape(s) for s in shape) + "]"
    return f"(None, {', '.join(str(int(d)) for d in shape)})" if shape else "(None,)"


def summary(model: Layer, input_shape: Sequence[int] | Any) -> str:
    """A table like Keras ``model.summary()``: layer, output shape, parameter count, total.

    A graph model gets a fourth column, the rows each call reads ("Connected to"), as
    Keras prints for functional models. Non-trainable state (BatchNorm statistics) is
    counted apart, as Keras does.
    """
    rows = describe(model, input_shape)
    graph = "graph" in model.config
    cells = [(f"{r.name} ({'InputLayer' if r.kind == 'input' else display_kind(r.kind)})",
              format_shape(r.shape), f"{r.params:,}", ", ".join(r.connected)) for r in rows]
    headers = ("Layer (type)", "Output Shape", "Param #", "Connected to")
    widths = [max(len(headers[i]), *(len(c[i]) for c in cells)) + 2 for i in range(4)]
    widths[2] = max(widths[2], 10)
    columns = 4 if graph else 3

    def line(values):
        text = f"{values[0]:<{widths[0]}}{values[1]:<{widths[1]}}{values[2]:>{widths[2]}}"
        return (text + (f"  {values[3]}" if columns == 4 else "")).rstrip()

    rule = "-" * (sum(widths[:3]) + (widths[3] + 2 if columns == 4 else 0))
    total = sum(r.params for r in rows)
    state_total = sum(r.state for r in rows)
    lines = [rule, line(headers), rule, *map(line, cells), rule,
             f"Total params: {total:,} ({total * 4 / 1024:.2f} KB as float32)"]
    if state_total:
        lines.append(f"Non-trainable state: {state_total:,}")
    lines.append(rule)
    return "\n".join(lines)

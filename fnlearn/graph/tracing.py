"""The static graph of a pure function: trace it once, look at it as data.

TensorFlow builds a graph of named nodes and prints each as
``tf.Tensor(2.0, shape=(), dtype=float32)``. In JAX the graph is the *jaxpr*
that ``jax.make_jaxpr`` records when a function is traced with example
arguments. ``trace`` turns that jaxpr into a flat list of ``Node`` values (inputs,
constants, operations, outputs), each with its shape, dtype and, when the
example arguments are concrete, its value. The same function can then be
viewed further down the stack: ``stablehlo_text`` (what JAX hands the compiler),
``hlo_text`` (what XLA compiled) and ``cost_analysis`` (XLA's flop and byte counts).

Plain JAX equivalents, for reference:
    jax.make_jaxpr(fn)(*args)                      # the jaxpr, printable
    jax.jit(fn).lower(*args).as_text()             # StableHLO
    jax.jit(fn).lower(*args).compile().as_text()   # optimized HLO
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Literal

# Calls whose body is itself a jaxpr. Drawing their body inline shows the real
# operations (``max`` inside ``relu``) instead of one opaque ``jit`` box.
_INLINE_PARAMS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
                  "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr"}
_KINDS = ("input", "constant", "operation", "output")


@dataclass(frozen=True)
class Node:
    """One value in the graph: an input, a constant, or the result of an operation.

    Attributes:
      kind: "input", "constant", "operation" or "output" (an operation whose
        result the function returns; "identity" when it returns an input as is).
      name: unique name, used by other nodes' ``inputs``.
      op: primitive name for operations and outputs ("add", "dot_general"), else None.
      inputs: names of the nodes this one consumes, in argument order.
      shape: array shape.
      dtype: NumPy dtype name, e.g. "float32".
      value: the value as a NumPy array when known (constants always; every node
        when ``trace`` got concrete example arguments), else None.
      params: the operation's small static parameters, as (name, text) pairs.
    """

    kind: str
    name: str
    op: str | None
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    value: np.ndarray | None = None
    params: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        text = self.name
        if self.op is not None:
            params = ", ".join(f"{k}={v}" for k, v in self.params)
            params = f"[{params}]" if params else ""
            text += f" = {self.op}{params}({', '.join(self.inputs)})"
        if self.value is not None:
            text += f" = {format_value(self.value)}"
        return f"{text}  [{self.kind}, shape={self.shape}, dtype={self.dtype}]"


@dataclass(frozen=True)
class Graph:
    """A traced function: its nodes in execution order, and the jaxpr they came from."""

    nodes: tuple[Node, ...]
    jaxpr: Any  # ClosedJaxpr; str() of it prints the jaxpr

    def __str__(self) -> str:
        return "\n".join(str(node) for node in self.nodes)

    def node(self, name: str) -> Node:
        """Return the node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r}; names are {[n.name for n in self.nodes]}")

    def of_kind(self, kind: str) -> tuple[Node, ...]:
        """Return the nodes of one kind ("input", "constant", "operation", "output")."""
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        return tuple(node for node in self.nodes if node.kind == kind)


def format_value(value: np.ndarray) -> str:
    """Format a node value on one line the way NumPy prints it, summarizing large arrays."""
    value = np.asarray(value)
    if value.ndim == 0:
        return str(value[()])  # "2.0", not NumPy's 0-d array form "2."
    text = np.array2string(value, threshold=10, edgeitems=3, max_line_width=10**6)
    return re.sub(r"\n\s*", " ", text)  # rows of a matrix on one line: one node, one line


def trace(
    fn: Callable,
    *example_args: Any,
    output_names: Sequence[str] | None = None,
    with_values: bool = True,
) -> Graph:
    """Trace ``fn`` on example arguments into its static graph.

    Args:
      fn: a pure function of arrays (or pytrees of arrays), e.g. ``jax.grad(loss)``.
      *example_args: arguments to trace with. Concrete arrays give every node a
        value; ``jax.ShapeDtypeStruct`` values give shapes and dtypes only.
      output_names: one name per output leaf; default "out", or "out[0]", "out['loss']"...
      with_values: evaluate the graph on the example arguments to fill in values.

    Returns:
      A ``Graph``. Input nodes are named after ``fn``'s parameters (pytree leaves get
      a path: "params['w']"); operations after their primitive ("add", "add_1").
    """
    if not callable(fn):
        raise TypeError(f"trace expects a callable, got {type(fn).__name__}")
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    leaves = jax.tree.leaves(example_args)
    concrete = with_values and not any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)

    builder = _Builder()
    env = {}
    for var, name, leaf in zip(closed.jaxpr.invars, _input_names(fn, example_args), leaves,
                               strict=True):
        env[var] = builder.add("input", name, None, (), var.aval,
                               np.asarray(leaf) if concrete else None)
    results = builder.inline(closed, [env[v] for v in closed.jaxpr.invars], concrete)

    names = _output_names(out_shape, output_names)
    claimed = set()
    for (source, value), name in zip(results, names, strict=True):
        node = builder.by_name[source]
        if node.kind == "operation" and source not in claimed:
            builder.rename(source, name, kind="output")
            claimed.add(name)
        else:  # an input, constant or already-returned value passed straight through
            builder.add("output", name, "identity", (source,), _aval_of(node), value)
    return Graph(nodes=tuple(builder.nodes), jaxpr=closed)


class _Builder:
    """Collects nodes with unique names while walking a (nested) jaxpr."""

    def __init__(self):
        self.nodes: list[Node] = []
        self.by_name: dict[str, Node] = {}
        self.counts: dict[str, int] = {}

    def unique(self, base: str) -> str:
        count = self.counts.get(base, 0)
        self.counts[base] = count + 1
        name = base if count == 0 else f"{base}_{count}"
        return self.unique(base) if name in self.by_name else name

    def add(self, kind, name, op, inputs, aval, value, params=()) -> tuple[str, Any]:
        node = Node(kind=kind, name=self.unique(name), op=op, inputs=tuple(inputs),
                    shape=tuple(aval.shape), dtype=np.dtype(aval.dtype).name,
                    value=None if value is None else np.asarray(value, aval.dtype), params=params)
        self.nodes.append(node)
        self.by_name[node.name] = node
        return node.name, value

    def rename(self, old: str, new: str, kind: str) -> None:
        new = self.unique(new)
        def fix(node):
            inputs = tuple(new if i == old else i for i in node.inputs)
            if node.name == old:
                return replace(node, name=new, kind=kind, inputs=inputs)
            return replace(node, inputs=inputs)
        self.nodes = [fix(node) for node in self.nodes]
        self.by_name = {node.name: node for node in self.nodes}

    def inline(self, closed, args, concrete) -> list[tuple[str, Any]]:
        """Add the nodes of ``closed`` applied to ``args`` ((name, value) pairs); return outputs."""
        jaxpr = closed.jaxpr
        env = dict(zip(jaxpr.invars, args, strict=True))
        for var, const in zip(jaxpr.constvars, closed.consts, strict=True):
            env[var] = self.add("constant", "const", None, (), var.aval, const)

        def read(atom):
            if isinstance(atom, Literal):
                return self.add("constant", "const", None, (), atom.aval, atom.val)
            return env[atom]

        for eqn in jaxpr.eqns:
            ins = [read(atom) for atom in eqn.invars]
            body = eqn.params.get(_INLINE_PARAMS.get(eqn.primitive.name, ""))
            if isinstance(body, ClosedJaxpr) and len(body.jaxpr.invars) == len(ins):
                outs = self.inline(body, ins, concrete)
            else:
                outs = self.operation(eqn, ins, concrete)
            env.update(zip(eqn.outvars, outs, strict=True))
        return [read(atom) for atom in jaxpr.outvars]

    def operation(self, eqn, ins, concrete) -> list[tuple[str, Any]]:
        values = [None] * len(eqn.outvars)
        if concrete:
            # The same evaluation ``jax.core.eval_jaxpr`` does, one equation at a time.
            # Older JAX returned (subfuns, params) here; newer returns params only.
            bind_params = eqn.primitive.get_bind_params(eqn.params)
            subfuns = ()
            if isinstance(bind_params, tuple):
                subfuns, bind_params = bind_params
            result = eqn.primitive.bind(*subfuns, *(v for _, v in ins), **bind_params)
            values = result if eqn.primitive.multiple_results else [result]
        op = eqn.primitive.name
        base = op if len(eqn.outvars) == 1 else f"{op}_out"
        return [self.add("operation", base, op, [n for n, _ in ins], var.aval, value,
                         _small_params(eqn.params))
                for var, value in zip(eqn.outvars, values, strict=True)]


def _small_params(params: dict) -> tuple[tuple[str, str], ...]:
    # Keep what helps a reader (``y=2``, ``axes=(0,)``), drop nested jaxprs and sharding noise.
    shown = []
    for key, value in params.items():
        text = str(value)
        if value is None or "sharding" in key or "\n" in text or len(text) > 40:
            continue
        shown.append((key, text))
    return tuple(shown)


def _aval_of(node: Node) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(node.shape, np.dtype(node.dtype))


def _input_names(fn: Callable, args: tuple) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins and some wrapped callables have no signature
        params = []
    names = []
    for i, arg in enumerate(args):
        if i < len(params) and params[i].kind != inspect.Parameter.VAR_POSITIONAL:
            base = params[i].name
        elif params and params[-1].kind == inspect.Parameter.VAR_POSITIONAL:
            base = f"{params[-1].name}[{i - len(params) + 1}]"
        else:
            base = f"arg{i}"
        paths = jax.tree_util.tree_flatten_with_path(arg)[0]
        names += [base + jax.tree_util.keystr(path) for path, _ in paths]
    return names


def _output_names(out_shape: Any, output_names: Sequence[str] | None) -> list[str]:
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(out_shape)[0]]
    if output_names is None:
        return ["out" + jax.tree_util.keystr(path) for path in paths]
    if isinstance(output_names, str) or len(output_names) != len(paths):
        raise ValueError(f"output_names must be a sequence of {len(paths)} name(s), one per "
                         f"output leaf; got {output_names!r}")
    return list(output_names)


def stablehlo_text(fn: Callable, *example_args: Any) -> str:
    """Return the StableHLO module JAX lowers ``fn`` to: the program handed to XLA.

    Args:
      fn: a pure function of arrays.
      *example_args: arrays or ``jax.ShapeDtypeStruct`` values fixing shapes and dtypes.

    Returns:
      MLIR text (``module @jit_fn { func.func public @main ... }``).
    """
    return jax.jit(fn).lower(*example_args).as_text()


def hlo_text(fn: Callable, *example_args: Any) -> str:
    """Return the HLO XLA compiled ``fn`` into for the default device, after its optimizations.

    Args:
      fn: a pure function of arrays.
      *example_args: arrays or ``jax.ShapeDtypeStruct`` values fixing shapes and dtypes.

    Returns:
      HLO text (``HloModule jit_fn ... ENTRY ...``); fused ops show as ``fusion``.
    """
    return jax.jit(fn).lower(*example_args).compile().as_text()


def cost_analysis(fn: Callable, *example_args: Any) -> dict[str, float]:
    """Return XLA's cost estimate for compiled ``fn`` on the default device.

    Args:
      fn: a pure function of arrays.
      *example_args: arrays or ``jax.ShapeDtypeStruct`` values fixing shapes and dtypes.

    Returns:
      A plain dict of floats. "flops" (an (m, k) @ (k, n) matmul counts 2*m*k*n)
      and "bytes accessed" are the keys most backends report; others vary by backend.
    """
    costs = jax.jit(fn).lower(*example_args).compile().cost_analysis()
    if isinstance(costs, (list, tuple)):  # older JAX returned one dict per device
        costs = costs[0] if costs else {}
    return {str(key): float(value) for key, value in (costs or {}).items()}

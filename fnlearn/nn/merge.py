"""Layers that merge branches: ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``,
``Minimum``, ``Concatenate`` (Keras's merging layers; stax's ``FanInSum``/``FanInConcat``).

Each takes a list or tuple of inputs (``nn.Add()([a, b])``, or ``nn.Add()(a, b)``) and
checks their shapes at ``init``; inside a graph model the message also names the
branches the inputs come from.
"""

from __future__ import annotations

import functools
import operator

import jax.numpy as jnp

from fnlearn.nn.core import Layer, constructor


def _inputs(kind: str, shapes, exactly: int | None = None) -> list[tuple[int, ...]]:
    wanted = "2 or more" if exactly is None else str(exactly)
    if (not isinstance(shapes, list | tuple) or len(shapes) < 2
            or (exactly is not None and len(shapes) != exactly)
            or not all(isinstance(s, tuple) for s in shapes)):
        raise ValueError(f"{kind} needs a list of {wanted} inputs, got per-example shape "
                         f"{shapes}")
    return list(shapes)


def _elementwise(kind: str, combine, exactly: int | None = None) -> Layer:
    def init_fn(key, input_shape):
        shapes = _inputs(kind, input_shape, exactly)
        if len(set(shapes)) != 1:
            raise ValueError(f"{kind} needs inputs of one shape, got per-example shapes "
                             f"{' and '.join(map(str, shapes))}")
        return shapes[0], {}

    def apply_fn(params, xs, *, key=None, train=False):
        return combine(list(xs))

    return Layer(init_fn, apply_fn, kind.lower())


@constructor
def Add() -> Layer:
    """The sum of its inputs (Keras ``layers.Add``; ``a + b`` in a PyTorch ``forward``)."""
    return _elementwise("Add", lambda xs: functools.reduce(operator.add, xs))


@constructor
def Subtract() -> Layer:
    """Its first input minus its second (Keras ``layers.Subtract``)."""
    return _elementwise("Subtract", lambda xs: xs[0] - xs[1], exactly=2)


@constructor
def Multiply() -> Layer:
    """The element-wise product of its inputs (Keras ``layers.Multiply``)."""
    return _elementwise("Multiply", lambda xs: functools.reduce(operator.mul, xs))


@constructor
def Average() -> Layer:
    """The element-wise mean of its inputs (Keras ``layers.Average``)."""
    return _elementwise("Average", lambda xs: functools.reduce(operator.add, xs) / len(xs))


@constructor
def Maximum() -> Layer:
    """The element-wise maximum of its inputs (Keras ``layers.Maximum``)."""
    return _elementwise("Maximum", lambda xs: functools.reduce(jnp.maximum, xs))


@constructor
def Minimum() -> Layer:
    """The element-wise minimum of its inputs (Keras ``layers.Minimum``)."""
    return _elementwise("Minimum", lambda xs: functools.reduce(jnp.minimum, xs))


@constructor
def Concatenate(axis: int = -1) -> Layer:
    """Its inputs joined along ``axis`` (Keras ``layers.Concatenate``, ``torch.cat``).

    ``axis`` counts the batch axis, as Keras's does: -1 (the default) is the channels of
    NHWC images, 1 the first per-example axis; 0 (the batch) is refused. PyTorch's
    ``torch.cat(..., dim=1)`` on NCHW images is ``axis=-1`` here.
    """
    if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
        raise ValueError(f"Concatenate axis must be a non-zero int (it counts the batch axis, "
                         f"as Keras's does), got {axis!r}")

    def init_fn(key, input_shape):
        shapes = _inputs("Concatenate", input_shape)
        rank = len(shapes[0])
        # Per-example axis: Keras's axis counts the batch axis.
        per_example = axis - 1 if axis > 0 else rank + axis
        if not 0 <= per_example < rank or any(len(s) != rank for s in shapes):
            raise ValueError(f"Concatenate axis {axis} does not fit inputs of per-example "
                             f"shapes {' and '.join(map(str, shapes))}")
        rest = {s[:per_example] + s[per_example + 1:] for s in shapes}
        if len(rest) != 1:
            raise ValueError(f"Concatenate needs inputs whose shapes agree except on axis "
                             f"{axis}, got per-example shapes {' and '.join(map(str, shapes))}")
        size = sum(s[per_example] for s in shapes)
        return shapes[0][:per_example] + (size,) + shapes[0][per_example + 1:], {}

    def apply_fn(params, xs, *, key=None, train=False):
        return jnp.concatenate(list(xs), axis=axis)

    return Layer(init_fn, apply_fn, "concatenate", {"axis": axis})

"""Graph models in one call, for the shapes that recur: ``residual``, ``fan_out``, ``parallel``.

Each is an ``nn.Model`` built for you (so ``summary`` shows its steps and it nests like
any layer), the stax combinators' counterparts: ``fan_out(a, b, merge=Concatenate())``
is stax's ``serial(FanOut(2), parallel(a, b), FanInConcat())``.
"""

from __future__ import annotations

from fnlearn.nn.core import Layer
from fnlearn.nn.graph import graph_layer
from fnlearn.nn.merge import Add
from fnlearn.nn.node import Input


def _check(layers, what: str) -> None:
    if not layers:
        raise ValueError(f"{what} needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{what}: argument {i} is {type(layer).__name__}, not a Layer")


def residual(*layers: Layer, shortcut: Layer | None = None, merge: Layer | None = None,
             name: str | None = None) -> Layer:
    """``merge([layers(x), shortcut(x)])``: a residual block (ResNet's ``out += identity``).

    Args:
      layers: the main branch, applied in order.
      shortcut: a layer on the skip connection (a strided 1x1 ``Conv2D`` when the main
        branch changes the shape); None passes ``x`` as it is.
      merge: how the branches meet (default ``Add()``; ``Concatenate()`` for DenseNet).
      name: the block's name in the model that contains it.
    """
    _check(layers, "residual")
    x = Input()
    h = x
    for layer in layers:
        h = layer(h)
    skip = x if shortcut is None else shortcut(x)
    return graph_layer(x, (merge or Add())([h, skip]), name=name, kind="residual")


def fan_out(*layers: Layer, merge: Layer | None = None, name: str | None = None) -> Layer:
    """Each layer on the same input: a tuple of their outputs, or ``merge`` of them.

    ``fan_out(Conv2D(16, 1), Conv2D(16, 3, padding="same"), merge=Concatenate())`` is an
    Inception-style block; without ``merge``, several heads on one trunk.
    """
    _check(layers, "fan_out")
    x = Input()
    outputs = tuple(layer(x) for layer in layers)
    return graph_layer(x, outputs if merge is None else merge(list(outputs)), name=name,
                       kind="fan_out")


def parallel(*layers: Layer, name: str | None = None) -> Layer:
    """Layer ``i`` on input ``i`` of a tuple: stax's ``parallel`` (a tuple in, a tuple out)."""
    _check(layers, "parallel")
    inputs = tuple(Input() for _ in layers)
    return graph_layer(inputs, tuple(layer(x) for layer, x in zip(layers, inputs)), name=name,
                       kind="parallel")

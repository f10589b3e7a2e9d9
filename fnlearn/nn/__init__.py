"""Layers as pure ``(init, apply)`` pairs, composed with ``serial`` or into graphs with ``Model``.

- ``core``: the ``Layer`` protocol (stateless and stateful), layer equality and names,
  ``init``, ``init_with_state``, ``apply``.
- ``serial``: ``serial``/``Sequential``. ``graph``: ``Input``, ``Model`` (Keras's
  functional API) and the helpers ``residual``, ``parallel``, ``fan_out``.
- ``merge``: ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``,
  ``Concatenate``.
- ``summary``: ``summary`` (Keras's table) and ``describe`` (its rows as data).
- ``dense``: ``Dense``/``Linear``, activations, ``Flatten``, ``Normalize``, ``Dropout``.
- ``conv``: ``Conv2D``, ``MaxPool2D``, ``AvgPool2D``, ``GlobalAveragePooling2D``, ``Reshape``
  (NHWC activations, HWIO kernels).
- ``norm``: ``BatchNorm`` (stateful: running statistics; Keras or PyTorch conventions).
- ``flax``: ``from_flax``, a linen module as a layer.

Parameters are plain dicts of arrays keyed by layer name: the name given
(``Dense(128, name="hidden")``) or ``<kind>_<n>``, n counting the unnamed layers of
that kind in order (``dense_0``, ``dense_1``), so a checkpoint or a weight conversion
names the layer it is about and inserting a layer of another kind renames nothing.
"""

from fnlearn.nn import conv as _conv
from fnlearn.nn.combinators import fan_out, parallel, residual
from fnlearn.nn.conv import explicit_padding
from fnlearn.nn.core import (
    Layer,
    ModelState,
    Params,
    Shape,
    apply,
    as_key,
    constructor,
    count_params,
    init,
    init_with_state,
)
from fnlearn.nn.dense import (
    ACTIVATIONS,
    Activation,
    Dense,
    Dropout,
    Flatten,
    Linear,
    LogSoftmax,
    Normalize,
    ReLU,
    Softmax,
    glorot_uniform,
    torch_linear_uniform,
)
from fnlearn.nn.flax import from_flax
from fnlearn.nn.graph import Model
from fnlearn.nn.merge import Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract
from fnlearn.nn.node import Input, Node
from fnlearn.nn.norm import BatchNorm
from fnlearn.nn.serial import Sequential, serial
from fnlearn.nn.summary import describe, summary

# The convolution module's constructors, with name= and structural equality.
Conv2D = constructor(_conv.Conv2D)
MaxPool2D = constructor(_conv.MaxPool2D)
AvgPool2D = constructor(_conv.AvgPool2D)
GlobalAveragePooling2D = constructor(_conv.GlobalAveragePooling2D)
Reshape = constructor(_conv.Reshape)

__all__ = [
    "ACTIVATIONS", "Activation", "Add", "Average", "AvgPool2D", "BatchNorm", "Concatenate",
    "Conv2D", "Dense", "Dropout", "Flatten", "GlobalAveragePooling2D", "Input", "Layer",
    "Linear", "LogSoftmax", "MaxPool2D", "Maximum", "Minimum", "Model", "ModelState", "Multiply",
    "Node", "Normalize", "Params", "ReLU", "Reshape", "Sequential", "Shape", "Softmax",
    "Subtract", "apply", "as_key", "constructor", "count_params", "describe",
    "explicit_padding", "fan_out", "from_flax", "glorot_uniform", "init", "init_with_state", "parallel", "residual", "serial",
    "summary", "torch_linear_uniform",
]

"""Layers as pure ``(init, apply)`` pairs, composed with ``serial``.

- ``core``: the ``Layer`` protocol (stateless and stateful), ``serial``, ``init``,
  ``init_with_state``, ``apply``, ``summary``.
- ``dense``: ``Dense``/``Linear``, activations, ``Flatten``, ``Normalize``, ``Dropout``.
- ``conv``: ``Conv2D``, ``MaxPool2D``, ``AvgPool2D``, ``GlobalAveragePooling2D``, ``Reshape``
  (NHWC activations, HWIO kernels).
- ``norm``: ``BatchNorm`` (stateful: running statistics; Keras or PyTorch conventions).
- ``flax``: ``from_flax`` (a linen module) and ``from_nnx`` (an NNX module) as layers.

Parameters are plain dicts of arrays; ``serial`` keys each child's parameters by
``"<kind>_<position>"`` (``dense_1``, ``dense_4``), so a checkpoint or a weight
conversion names the layer it is about.
"""

from fnlearn.nn.conv import (
    AvgPool2D,
    Conv2D,
    GlobalAveragePooling2D,
    MaxPool2D,
    Reshape,
    explicit_padding,
)
from fnlearn.nn.core import (
    Layer,
    ModelState,
    Params,
    Sequential,
    Shape,
    apply,
    as_key,
    count_params,
    init,
    init_with_state,
    serial,
    summary,
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
from fnlearn.nn.flax import from_flax, from_nnx
from fnlearn.nn.norm import BatchNorm

__all__ = [
    "ACTIVATIONS", "Activation", "AvgPool2D", "BatchNorm", "Conv2D", "Dense", "Dropout",
    "Flatten", "GlobalAveragePooling2D", "Layer", "Linear", "LogSoftmax", "MaxPool2D",
    "ModelState", "Normalize", "Params", "ReLU", "Reshape", "Sequential", "Shape", "Softmax",
    "apply", "as_key", "count_params", "explicit_padding", "from_flax", "from_nnx",
    "glorot_uniform", "init", "init_with_state", "serial", "summary", "torch_linear_uniform",
]

"""Layers as pure ``(init, apply)`` pairs, composed with ``serial``.

- ``core``: the ``Layer`` protocol (stateless and stateful), ``serial``, ``init``,
  ``init_with_state``, ``apply``, ``summary``.
- ``dense``: ``Dense``/``Linear``, activations, ``Flatten``, ``Normalize``, ``Dropout``.
- ``flax``: ``from_flax``, a linen module as a layer.

Parameters are plain dicts of arrays; ``serial`` keys each child's parameters by
``"<kind>_<position>"`` (``dense_1``, ``dense_4``), so a checkpoint or a weight
conversion names the layer it is about.
"""

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
from fnlearn.nn.flax import from_flax

__all__ = [
    "ACTIVATIONS", "Activation", "Dense", "Dropout", "Flatten", "Layer", "Linear", "LogSoftmax",
    "ModelState", "Normalize", "Params", "ReLU", "Sequential", "Shape", "Softmax", "apply",
    "as_key", "count_params", "from_flax", "glorot_uniform", "init", "init_with_state",
    "serial", "summary", "torch_linear_uniform",
]

"""Layers as pure ``(init, apply)`` pairs, composed with ``serial`` or into graphs with ``Model``.

- ``core``: the ``Layer`` protocol (stateless and stateful), layer equality and names,
  ``init``, ``init_with_state``, ``apply``.
- ``serial``: ``serial``/``Sequential``. ``graph``: ``Input``, ``Model`` (Keras's
  functional API) and the helpers ``residual``, ``parallel``, ``fan_out``.
- ``merge``: ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``,
  ``Concatenate``.
- ``summary``: ``summary`` (Keras's table) and ``describe`` (its rows as data).
- ``dense``: ``Dense``/``Linear``, ``ReLU``/``Softmax``/``Activation``, ``Flatten``,
  ``Normalize``, ``Dropout``, ``SpatialDropout2D``.
- ``conv``: ``Conv2D``, ``MaxPool2D``, ``AvgPool2D``, ``GlobalAveragePooling2D``, ``Reshape``
  (NHWC activations, HWIO kernels).
- ``conv_more``: ``Conv1D``, ``Conv2DTranspose``, ``DepthwiseConv2D``.
- ``norm``: ``BatchNorm`` (stateful: running statistics), ``LayerNorm``, ``GroupNorm``;
  Keras or PyTorch conventions.
- ``reshaping``: ``UpSampling2D``, ``ZeroPadding2D``, ``AdaptiveAvgPool2D``.
- ``recurrent``: ``SimpleRNN``, ``LSTM``, ``GRU``, ``Bidirectional`` (the recurrence in
  ``rnn_cells``). ``attention``: ``MultiHeadAttention``. ``transformer``:
  ``TransformerEncoderLayer``. ``sequence``: ``PositionEmbedding``,
  ``SinusoidalPositionEmbedding``, ``ClassToken``, ``GlobalAveragePooling1D``, ``TakeStep``.
- ``embedding``: ``Embedding``. ``augment``: ``RandomFlip``, ``RandomCrop`` (training only).
- ``activations``: ``ACTIVATIONS`` by name, and ``GELU``, ``LeakyReLU``, ``ELU``, ``SiLU``,
  ``HardSigmoid``, ``ReLU6``, ``Tanh``, ``Sigmoid`` as layers.
- ``flax``: ``from_flax`` (a linen module) and ``from_nnx`` (an NNX module) as layers.
- ``precision``: what layers' ``dtype``/``param_dtype`` arguments mean; ``policy``:
  ``with_policy(model, "mixed_bfloat16")`` and ``Policy`` (Keras's precision policies).

Parameters are plain dicts of arrays keyed by layer name: the name given
(``Dense(128, name="hidden")``) or ``<kind>_<n>``, n counting the unnamed layers of
that kind in order (``dense_0``, ``dense_1``), so a checkpoint or a weight conversion
names the layer it is about and inserting a layer of another kind renames nothing.
"""

from fnlearn.nn.activations import (
    ELU,
    GELU,
    HardSigmoid,
    LeakyReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Tanh,
)
from fnlearn.nn.attention import MultiHeadAttention
from fnlearn.nn.augment import RandomCrop, RandomFlip
from fnlearn.nn.combinators import fan_out, parallel, residual
from fnlearn.nn.conv import (
    AvgPool2D,
    Conv2D,
    GlobalAveragePooling2D,
    MaxPool2D,
    Reshape,
    explicit_padding,
)
from fnlearn.nn.conv_more import Conv1D, Conv2DTranspose, DepthwiseConv2D
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
    SpatialDropout2D,
    glorot_uniform,
    torch_linear_uniform,
)
from fnlearn.nn.embedding import Embedding
from fnlearn.nn.flax import from_flax, from_nnx
from fnlearn.nn.graph import Model
from fnlearn.nn.merge import Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract
from fnlearn.nn.node import Input, Node
from fnlearn.nn.norm import BatchNorm, GroupNorm, LayerNorm
from fnlearn.nn.policy import Policy, policy_of, with_policy
from fnlearn.nn.recurrent import GRU, LSTM, Bidirectional, SimpleRNN
from fnlearn.nn.reshaping import AdaptiveAvgPool2D, UpSampling2D, ZeroPadding2D
from fnlearn.nn.sequence import (
    ClassToken,
    GlobalAveragePooling1D,
    PositionEmbedding,
    SinusoidalPositionEmbedding,
    TakeStep,
)
from fnlearn.nn.serial import Sequential, serial
from fnlearn.nn.summary import describe, summary
from fnlearn.nn.transformer import TransformerEncoderLayer

__all__ = [
    "ACTIVATIONS", "Activation", "AdaptiveAvgPool2D", "Add", "Average", "AvgPool2D", "BatchNorm",
    "Bidirectional", "ClassToken", "Concatenate", "Conv1D", "Conv2D", "Conv2DTranspose", "Dense",
    "DepthwiseConv2D", "Dropout", "ELU", "Embedding", "Flatten", "GELU", "GRU",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GroupNorm", "HardSigmoid", "Input",
    "LSTM", "Layer", "LayerNorm", "LeakyReLU", "Linear", "LogSoftmax", "MaxPool2D", "Maximum",
    "Minimum", "Model", "ModelState", "MultiHeadAttention", "Multiply", "Node", "Normalize",
    "Params", "Policy", "PositionEmbedding", "RandomCrop", "RandomFlip", "ReLU", "ReLU6",
    "Reshape", "Sequential", "Shape", "SiLU", "Sigmoid", "SimpleRNN",
    "SinusoidalPositionEmbedding", "Softmax", "SpatialDropout2D", "Subtract", "TakeStep", "Tanh",
    "TransformerEncoderLayer", "UpSampling2D", "ZeroPadding2D", "apply", "as_key",
    "constructor", "count_params", "describe", "explicit_padding", "fan_out", "from_flax",
    "from_nnx",
    "glorot_uniform", "init", "init_with_state", "parallel", "policy_of", "residual", "serial",
    "summary", "torch_linear_uniform", "with_policy"
]

"""A model as a chain of operations, in one vocabulary for fnlearn, PyTorch and Keras.

Weight conversion and model import both walk a model as a sequence of ``Op``\\ s
whose ``kind`` comes from one small vocabulary (``"linear"``, ``"conv2d"``,
``"relu"``, ``"flatten"``, ...). A PyTorch module is read with ``torch.fx``
(so a module with its own ``forward`` works as well as an ``nn.Sequential``), a
Keras model from its layers. A graph that is not a chain (a residual add, a
concatenation) is refused, naming the node.
"""

from __future__ import annotations

import operator
import os
from typing import Any, NamedTuple

from fnlearn.parity import sequence_walk

# Kinds that compute nothing at inference or hold no weights that pair up; left out
# when two models are compared kind by kind. Zero padding is how a convolution's
# asymmetric or explicit padding is spelled in PyTorch and Keras (a layer before it);
# the padding itself is checked by running the models, not by the kinds.
IGNORED_KINDS = ("dropout", "spatial_dropout", "identity", "normalize", "zero_pad", "crop",
                 "masking")
# Kinds that act on each feature alone: between a Flatten and a Linear they keep the
# feature order, which the Linear's rows then absorb.
ELEMENTWISE_KINDS = ("dropout", "spatial_dropout", "identity", "relu", "tanh", "sigmoid")


class Op(NamedTuple):
    """One operation of a chain: its kind, the framework object, where it sits, its settings."""

    kind: str
    obj: Any
    where: str
    config: dict


def import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError("this fnlearn.parity function needs PyTorch: "
                          "pip install 'fnlearn[parity]'") from error
    return torch


def import_keras():
    # Quiet TensorFlow's C++ start-up logging unless the user chose a level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
    except ImportError as error:
        raise ImportError("this fnlearn.parity function needs TensorFlow and Keras: "
                          "pip install 'fnlearn[parity]'") from error
    return keras


TORCH_MODULES = {
    "Linear": "linear", "Conv2d": "conv2d", "BatchNorm1d": "batch_norm",
    "BatchNorm2d": "batch_norm", "MaxPool2d": "max_pool2d", "AvgPool2d": "avg_pool2d",
    "AdaptiveAvgPool2d": "global_avg_pool2d", "Flatten": "flatten", "ReLU": "relu",
    "Softmax": "softmax", "LogSoftmax": "log_softmax", "Tanh": "tanh", "Sigmoid": "sigmoid",
    "Dropout": "dropout", "Dropout2d": "spatial_dropout", "Identity": "identity",
    "Normalize": "normalize", "ZeroPad2d": "zero_pad", "GELU": "gelu", "LeakyReLU": "leaky_relu",
    "ELU": "elu", "SiLU": "silu", "Hardsigmoid": "hard_sigmoid", "ReLU6": "relu6",
    "ConvTranspose2d": "conv2d_transpose", "LayerNorm": "layer_norm", "GroupNorm": "group_norm",
    "Embedding": "embedding", "Upsample": "upsampling2d",
    # fnlearn's twins for channels-last layouts (fnlearn.parity.twins)
    "ChannelsLastConv1d": "conv1d", "ChannelsLastPad1d": "zero_pad",
    "ChannelwiseLayerNorm": "layer_norm", "ChannelsLastGroupNorm": "group_norm",
    # sequences: PyTorch's modules and fnlearn's twins (fnlearn.parity.twins_seq)
    **sequence_walk.RECURRENT_MODULES, "MultiheadAttention": "multi_head_attention",
    "TransformerEncoderLayer": "transformer_encoder", "TransformerEncoder": "transformer_encoder",
    "SelfAttention": "multi_head_attention", "CausalEncoderLayer": "transformer_encoder",
    "AddPositionEmbedding": "position_embedding",
    "AddSinusoids": "sinusoidal_position_embedding", "PrependToken": "class_token",
    "MeanOverTime": "global_avg_pool1d", "TakeStep": "take_step", "Reshape": "reshape",
}


def module_kind(module) -> str | None:
    """The vocabulary kind of a torch module, where its settings decide it."""
    name = type(module).__name__
    if name == "GELU" and module.approximate == "tanh":
        return "gelu_tanh"
    if name == "AdaptiveAvgPool2d" and module.output_size not in (1, (1, 1)):
        return "adaptive_avg_pool2d"
    return TORCH_MODULES.get(name)


def torch_functions(torch) -> dict:
    F = torch.nn.functional
    return {F.relu: "relu", torch.relu: "relu", F.max_pool2d: "max_pool2d",
            F.avg_pool2d: "avg_pool2d", torch.flatten: "flatten", F.log_softmax: "log_softmax",
            torch.log_softmax: "log_softmax", F.softmax: "softmax", torch.softmax: "softmax",
            F.dropout: "dropout", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid",
            F.sigmoid: "sigmoid", F.silu: "silu", F.relu6: "relu6", F.hardsigmoid: "hard_sigmoid",
            F.dropout2d: "spatial_dropout", F.elu: "elu", F.leaky_relu: "leaky_relu",
            F.gelu: "gelu"}


TORCH_METHODS = {"relu": "relu", "flatten": "flatten", "view": "flatten", "reshape": "flatten",
                 "log_softmax": "log_softmax", "softmax": "softmax", "tanh": "tanh",
                 "sigmoid": "sigmoid"}
_BRANCHING = {operator.add, operator.mul, operator.sub, "add", "cat", "stack", "mul"}


def supported_torch() -> list[str]:
    """What ``torch_ops`` understands, for error messages."""
    return sorted(set(TORCH_MODULES) | {"F.relu", "F.max_pool2d", "F.avg_pool2d",
                                        "torch.flatten", "x.view(n, -1)", "F.log_softmax",
                                        "F.softmax", "F.dropout", "F.dropout2d", "torch.tanh",
                                        "torch.sigmoid", "F.gelu", "F.silu", "F.relu6",
                                        "F.hardsigmoid", "F.elu", "F.leaky_relu"})


def function_config(kind: str, node) -> dict:
    args, kwargs = list(node.args[1:]), dict(node.kwargs)
    if kind in ("max_pool2d", "avg_pool2d"):
        names = ("kernel_size", "stride", "padding")
        config = dict(zip(names, args))
        config.update({k: v for k, v in kwargs.items() if k in names})
        if config.get("stride") is None:
            config["stride"] = config["kernel_size"]
        config.setdefault("padding", 0)
        return config
    if kind in ("dropout", "spatial_dropout"):
        return {"p": args[0] if args else kwargs.get("p", 0.5)}
    if kind == "leaky_relu":
        return {"negative_slope": args[0] if args else kwargs.get("negative_slope", 0.01)}
    if kind == "elu":
        return {"alpha": args[0] if args else kwargs.get("alpha", 1.0)}
    if kind in ("log_softmax", "softmax"):
        return {"dim": args[0] if args else kwargs.get("dim")}
    return {}


def state_dict_ops(state) -> list[Op]:
    """The weighted layers of a ``state_dict`` (names ``<prefix>.weight``...), in order.

    A state dict knows no activations: it pairs only with weighted layers.
    """
    groups: dict[str, dict] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = value
    ops = []
    for prefix, group in groups.items():
        where = f"state_dict entries '{prefix}.*'"
        weight = group.get("weight")
        if "running_mean" in group:
            kind = "batch_norm"
        elif weight is not None and len(weight.shape) in (2, 4):
            kind = "linear" if len(weight.shape) == 2 else "conv2d"
        else:
            raise ValueError(f"{where} ({sorted(group)}) are not the weights of a Linear, "
                             "Conv2d or BatchNorm layer")
        ops.append(Op(kind, group, where, {}))
    return ops


def torch_ops(module) -> list[Op]:
    """The chain of operations of a ``torch.nn.Module``, read with ``torch.fx``.

    A ``state_dict`` (a mapping of names to tensors) gives its weighted layers only.

    Raises:
      ValueError: an operation outside the vocabulary (the node and its target are
        named, with the list of what is supported), or a graph that branches.
    """
    if isinstance(module, dict):
        return state_dict_ops(module)
    torch = import_torch()
    if type(module).__name__ in TORCH_MODULES:
        # One known module on its own (an LSTM): torch.fx would trace into its forward.
        module = torch.nn.Sequential(module)

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualified_name):
            return type(m).__name__ in TORCH_MODULES or super().is_leaf_module(m, qualified_name)

    try:
        graph = Tracer().trace(module)
    except Exception as error:  # noqa: BLE001 - re-raised naming what could not be traced
        raise ValueError(f"cannot trace {type(module).__name__} with torch.fx "
                         f"(data-dependent control flow?): {error}") from error
    submodules = dict(module.named_modules())
    functions = torch_functions(torch)
    ops, previous, tuple_source = [], None, None
    for node in graph.nodes:
        if node.op == "placeholder":
            previous = node
            continue
        if node.op == "output":
            break
        if node.op == "get_attr" or (node.op == "call_method" and node.target == "size"):
            continue
        tensors = [a for a in node.all_input_nodes
                   if not (a.op == "call_method" and a.target == "size")]
        where = f"node {node.name!r} (target {getattr(node.target, '__name__', node.target)})"
        if node.target is operator.getitem and tensors and tensors[0] in (previous,
                                                                          tuple_source):
            last = tuple(ops[-1]) if ops else None
            action, index = sequence_walk.torch_item(node, last, tuple_source)
            if action == "skip":
                continue
            if action == "fold":
                ops[-1] = ops[-1]._replace(config={**ops[-1].config, "return_sequences": False})
            elif action == "take":
                ops.append(Op("take_step", None, where, {"index": index}))
            elif action == "other":
                raise ValueError(f"unsupported indexing {node.args[1]!r} at {where}: "
                                 "x[:, i] (one step of a sequence) is supported")
            tuple_source = None if action != "select" else tuple_source
            previous = node
            continue
        if node.target in _BRANCHING or len(tensors) != 1 or tensors[0] is not previous:
            raise ValueError(f"the graph branches at {where}: only chains of operations can be "
                             "converted (no residual adds or concatenations)")
        if node.op == "call_module":
            obj = submodules[node.target]
            expanded = sequence_walk.torch_module_ops(obj, where)
            if expanded is not None:
                ops += [Op(*op) for op in expanded]
                tuple_source = node if type(obj).__name__ in sequence_walk.TUPLE_MODULES \
                    else None
                previous = node
                continue
            kind = module_kind(obj)
            config = {}
            if type(obj).__name__ == "MultiheadAttention":
                tuple_source = node
            if kind is None:
                raise ValueError(f"unsupported operation {type(obj).__name__} at {where}; "
                                 f"supported: {', '.join(supported_torch())}")
        else:
            obj = None
            method = sequence_walk.torch_method(node) if node.op == "call_method" else None
            if method is not None or sequence_walk.is_mean_function(torch, node):
                kind, config = method or ("global_avg_pool1d", {})
                ops.append(Op(kind, None, where, config))
                previous = node
                continue
            kind = (functions.get(node.target) if node.op == "call_function"
                    else TORCH_METHODS.get(node.target))
            if kind == "gelu" and node.kwargs.get("approximate") == "tanh":
                kind = "gelu_tanh"
            if kind is None:
                raise ValueError(f"unsupported operation at {where}; "
                                 f"supported: {', '.join(supported_torch())}")
            config = function_config(kind, node)
        ops.append(Op(kind, obj, where, config))
        previous = node
    return _merge_global_pool_flatten(ops)


def _merge_global_pool_flatten(ops: list[Op]) -> list[Op]:
    # PyTorch spells global average pooling AdaptiveAvgPool2d(1) + flatten; fnlearn's
    # (and Keras's) layer already drops the spatial axes.
    merged = []
    for op in ops:
        if op.kind == "flatten" and merged and merged[-1].kind == "global_avg_pool2d":
            continue
        merged.append(op)
    return merged


KERAS_LAYERS = {
    "Dense": "linear", "Conv2D": "conv2d", "BatchNormalization": "batch_norm",
    "MaxPooling2D": "max_pool2d", "AveragePooling2D": "avg_pool2d",
    "GlobalAveragePooling2D": "global_avg_pool2d", "Flatten": "flatten", "ReLU": "relu",
    "Softmax": "softmax", "Dropout": "dropout", "Reshape": "reshape", "Lambda": "normalize",
    "Rescaling": "normalize", "Activation": "activation", "ZeroPadding2D": "zero_pad",
    "ZeroPadding1D": "zero_pad", "Cropping2D": "crop", "LeakyReLU": "leaky_relu", "ELU": "elu",
    "Conv1D": "conv1d", "Conv2DTranspose": "conv2d_transpose",
    "DepthwiseConv2D": "conv2d", "LayerNormalization": "layer_norm",
    "GroupNormalization": "group_norm", "Embedding": "embedding", "UpSampling2D": "upsampling2d",
    "AdaptiveAveragePooling2D": "adaptive_avg_pool2d", "SpatialDropout2D": "spatial_dropout",
    "RandomFlip": "identity", "Identity": "identity",
    "LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn", "Bidirectional": "bidirectional",
    "Masking": "masking", "MultiHeadAttention": "multi_head_attention",
    "GlobalAveragePooling1D": "global_avg_pool1d",
    # fnlearn's Keras twins of its sequence layers (fnlearn.parity.twins_seq)
    "AddPositionEmbedding": "position_embedding", "AddSinusoids": "sinusoidal_position_embedding",
    "PrependToken": "class_token", "TakeStep": "take_step",
}
_KERAS_WITH_ACTIVATION = ("Dense", "Conv2D", "Conv1D", "Conv2DTranspose", "DepthwiseConv2D")
KERAS_ACTIVATIONS = ("linear", "relu", "softmax", "log_softmax", "tanh", "sigmoid", "gelu",
                     "gelu_tanh", "leaky_relu", "elu", "silu", "hard_sigmoid", "relu6")


def keras_ops(keras_model) -> list[Op]:
    """The chain of operations of a ``keras.Sequential`` or functional model.

    A layer's own activation (``Dense(10, activation="relu")``) becomes an op of its own.
    Nested models are walked; a self-attention call (``MultiHeadAttention(x, x)``) and a
    Transformer encoder block (two residual units, ``sequence_walk``) are one op each.

    Raises:
      ValueError: an unsupported layer (named, with its position and the supported list),
        or a branch that is not part of an encoder block.
    """
    ops = []
    for layer, where, config in sequence_walk.keras_chain(keras_model):
        if isinstance(layer, sequence_walk.KerasEncoderBlock):
            ops.append(Op("transformer_encoder", layer, where, config))
            continue
        name = type(layer).__name__
        kind = KERAS_LAYERS.get(name)
        if kind is None:
            raise ValueError(f"unsupported layer {name} at {where}; supported: "
                             f"{', '.join(sorted(KERAS_LAYERS))}")
        if kind == "activation":
            kind = _keras_activation_name(layer.activation, where)
        elif kind == "adaptive_avg_pool2d" and tuple(layer.output_size) == (1, 1):
            kind = "global_avg_pool2d"
        elif kind == "bidirectional":
            kind = KERAS_LAYERS[type(layer.forward_layer).__name__]
        ops.append(Op(kind, layer, where, config))
        activation = getattr(layer, "activation", None)
        if name in _KERAS_WITH_ACTIVATION and activation is not None:
            act = _keras_activation_name(activation, where)
            if act != "linear":
                ops.append(Op(act, None, f"{where} activation", {}))
    return ops


def _keras_activation_name(function, where: str) -> str:
    name = getattr(function, "__name__", str(function))
    if name not in KERAS_ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r} at {where}")
    return name

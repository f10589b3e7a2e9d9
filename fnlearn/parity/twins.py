"""The registry's entries for the layers beyond the first models: activations with parameters,
``Conv1D``, ``Conv2DTranspose``, ``DepthwiseConv2D``, ``LayerNorm``, ``GroupNorm``,
``Embedding``, ``UpSampling2D``, ``ZeroPadding2D``, ``AdaptiveAvgPool2D``,
``SpatialDropout2D`` and the augmentation layers (``registry`` adds them to ``REGISTRY``).

Twins take fnlearn's layout where PyTorch has none of its own for it: a ``Conv1D`` twin
is a ``ChannelsLastConv1d`` (PyTorch's ``Conv1d`` between two transposes) taking
``(batch, length, channels)``, a ``LayerNorm`` over the channels of an NCHW image a
``ChannelwiseLayerNorm``. Their weights are the modules' own, so state dicts convert as
for the plain modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from fnlearn.nn.conv import explicit_padding
from fnlearn.parity.compare import to_numpy
from fnlearn.parity.graphs import import_torch


class Entry(NamedTuple):
    ops: Callable
    torch: Callable
    keras: Callable
    to_torch: Callable | None = None
    from_torch: Callable | None = None
    to_keras: Callable | None = None
    from_keras: Callable | None = None


ACTIVATION_KINDS = ("relu", "softmax", "log_softmax", "tanh", "sigmoid", "gelu", "gelu_tanh",
                    "leaky_relu", "elu", "silu", "swish", "hard_sigmoid", "relu6")


def f32(array) -> np.ndarray:
    return np.ascontiguousarray(to_numpy(array), np.float32)


def act(name: str | None) -> tuple[str, ...]:
    """The ops of a layer's ``activation`` name: none for linear; swish is silu."""
    if name in (None, "linear"):
        return ()
    return ("silu",) if name == "swish" else (name,)


def torch_activation(nn, name: str, config: dict | None = None):
    """The ``torch.nn`` module of activation ``name`` (with a layer's ``config``)."""
    config = config or {}
    modules = {
        "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
        "softmax": lambda: nn.Softmax(dim=-1), "log_softmax": lambda: nn.LogSoftmax(dim=-1),
        "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
        "leaky_relu": lambda: nn.LeakyReLU(config.get("negative_slope", 0.2)),
        "elu": lambda: nn.ELU(config.get("alpha", 1.0)), "silu": nn.SiLU, "swish": nn.SiLU,
        "hard_sigmoid": nn.Hardsigmoid, "relu6": nn.ReLU6}
    return modules[name]()


def keras_activation(keras, name: str):
    """What Keras's ``activation=`` takes for ``name``: its own name, or a function named so."""
    if name != "gelu_tanh":
        return name

    def gelu_tanh(x):
        return keras.activations.gelu(x, approximate=True)

    return gelu_tanh


def keras_activation_layer(keras, name: str, config: dict | None = None):
    config = config or {}
    if name == "relu":
        return keras.layers.ReLU()
    if name == "softmax":
        return keras.layers.Softmax(axis=-1)
    if name == "leaky_relu" and "negative_slope" in config:
        return keras.layers.LeakyReLU(negative_slope=config["negative_slope"])
    if name == "elu" and "alpha" in config:
        return keras.layers.ELU(alpha=config["alpha"])
    return keras.layers.Activation(keras_activation(keras, name))


def activation_entry(kind: str) -> Entry:
    return Entry(lambda layer: act(kind),
                 lambda layer, shape: [torch_activation(import_torch().nn, kind, layer.config)],
                 lambda keras, layer, shape: [keras_activation_layer(keras, kind, layer.config)])


def _channels_last(base, name: str, image: bool = False):
    """A subclass of torch module class ``base`` applied to channels-last values.

    ``image``: the twin takes NCHW (as every image twin does) and ``base`` wants the
    channels last; otherwise the twin takes ``(batch, ..., channels)`` and ``base`` wants
    them second (``Conv1d``, ``GroupNorm`` on sequences).
    """
    class ChannelsLast(base):
        def forward(self, x):
            if image:
                return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            last = (0, x.dim() - 1, *range(1, x.dim() - 1))
            first = (0, *range(2, x.dim()), 1)
            return super().forward(x.permute(*last)).permute(*first)

    ChannelsLast.__name__ = ChannelsLast.__qualname__ = name
    return ChannelsLast


def _kernel_bias(params, transpose) -> dict:
    out = {"weight": np.ascontiguousarray(transpose(f32(params["kernel"])))}
    if "bias" in params:
        out["bias"] = f32(params["bias"])
    return out


def _from_weight(tensors, untranspose, name: str = "kernel") -> tuple[dict, dict]:
    params = {name: np.ascontiguousarray(untranspose(f32(tensors["weight"])))}
    if tensors.get("bias") is not None:
        params["bias"] = f32(tensors["bias"])
    return params, {}


def _keras_weights(names):
    return (lambda params, state, layer: [f32(params[k]) for k in names if k in params],
            lambda weights, layer: ({k: f32(w) for k, w in zip(
                [k for k in names if k != "bias" or layer.config.get("use_bias", True)],
                weights)}, {}))


def _explicit(pads) -> bool:
    return not isinstance(pads, str)


# --- Conv1D -------------------------------------------------------------------------------


def _conv1d_torch(layer, shape):
    c = layer.config
    torch = import_torch()
    (lo, hi), = ((0, 0),) if c["padding"] == "valid" else (
        ((c["dilation"] * (c["kernel_size"] - 1), 0),) if c["padding"] == "causal" else
        (_same_1d(shape[0], c),) if c["padding"] == "same" else c["padding"])
    modules = [] if lo == hi else [_channels_last(torch.nn.ConstantPad1d, "ChannelsLastPad1d")(
        (lo, hi), 0.0)]
    conv = _channels_last(torch.nn.Conv1d, "ChannelsLastConv1d")(
        shape[-1], c["filters"], c["kernel_size"], stride=c["strides"],
        padding=lo if lo == hi else 0, dilation=c["dilation"], bias=c["use_bias"])
    return modules + [conv] + [torch_activation(torch.nn, a) for a in act(c["activation"])]


def _same_1d(length, c):
    span = (c["kernel_size"] - 1) * c["dilation"] + 1
    total = max((math.ceil(length / c["strides"]) - 1) * c["strides"] + span - length, 0)
    return total // 2, total - total // 2


def _conv1d_keras(keras, layer, shape):
    c = layer.config
    layers, padding = [], c["padding"]
    if _explicit(padding):
        layers.append(keras.layers.ZeroPadding1D(padding[0]))
        padding = "valid"
    return layers + [keras.layers.Conv1D(
        c["filters"], c["kernel_size"], strides=c["strides"], padding=padding,
        dilation_rate=c["dilation"], activation=keras_activation(keras, c["activation"]),
        use_bias=c["use_bias"])]


# --- Conv2DTranspose ----------------------------------------------------------------------


def _transpose_torch(layer, shape):
    c = layer.config
    nn = import_torch().nn
    spans = [d * (k - 1) + 1 for k, d in zip(c["kernel_size"], c["dilation"])]
    if c["padding"] == "valid" and c["output_padding"] is None and all(
            span >= s for span, s in zip(spans, c["strides"])):
        pads = ((0, 0), (0, 0))  # Keras's "valid" is PyTorch's padding 0 here
    elif not _explicit(c["padding"]):
        raise ValueError(f"Conv2DTranspose with padding {c['padding']!r} has no PyTorch twin; "
                         "give PyTorch's explicit padding and output_padding")
    else:
        pads = c["padding"]
    (top, bottom), (left, right) = pads
    if top != bottom or left != right:
        raise ValueError(f"Conv2DTranspose padding {c['padding']} is not symmetric: no "
                         "PyTorch twin")
    module = nn.ConvTranspose2d(shape[-1], c["filters"], c["kernel_size"], stride=c["strides"],
                                padding=(top, left), output_padding=c["output_padding"] or 0,
                                dilation=c["dilation"], bias=c["use_bias"])
    return [module] + [torch_activation(nn, a) for a in act(c["activation"])]


def _transpose_keras(keras, layer, shape):
    c = layer.config
    activation = keras_activation(keras, c["activation"])
    if not _explicit(c["padding"]):
        return [keras.layers.Conv2DTranspose(
            c["filters"], c["kernel_size"], strides=c["strides"], padding=c["padding"],
            output_padding=c["output_padding"], dilation_rate=c["dilation"],
            activation=activation, use_bias=c["use_bias"])]
    # PyTorch's padding crops the full output: Keras's "valid" output, then a crop.
    extra = c["output_padding"]
    layers = [keras.layers.Conv2DTranspose(
        c["filters"], c["kernel_size"], strides=c["strides"], padding="valid",
        output_padding=extra if extra and any(extra) else None, dilation_rate=c["dilation"],
        use_bias=c["use_bias"]), keras.layers.Cropping2D(c["padding"])]
    return layers + ([keras_activation_layer(keras, c["activation"])]
                     if c["activation"] != "linear" else [])


# --- DepthwiseConv2D ----------------------------------------------------------------------


def _depthwise_torch(layer, shape):
    c = layer.config
    nn = import_torch().nn
    channels = shape[-1]
    pads = c["padding"]
    if pads == "same":
        pads = explicit_padding("same", shape[:2], c["kernel_size"], c["strides"],
                                c["dilation"])
    pads = ((0, 0), (0, 0)) if pads == "valid" else pads
    (top, bottom), (left, right) = pads
    modules = []
    if top != bottom or left != right:
        modules.append(nn.ZeroPad2d((left, right, top, bottom)))
        top = left = 0
    modules.append(nn.Conv2d(channels, channels * c["depth_multiplier"], c["kernel_size"],
                             stride=c["strides"], padding=(top, left), dilation=c["dilation"],
                             groups=channels, bias=c["use_bias"]))
    return modules + [torch_activation(nn, a) for a in act(c["activation"])]


def _depthwise_keras(keras, layer, shape):
    c = layer.config
    layers, padding = [], c["padding"]
    if _explicit(padding):
        layers.append(keras.layers.ZeroPadding2D(padding))
        padding = "valid"
    return layers + [keras.layers.DepthwiseConv2D(
        c["kernel_size"], strides=c["strides"], padding=padding,
        depth_multiplier=c["depth_multiplier"], dilation_rate=c["dilation"],
        activation=keras_activation(keras, c["activation"]), use_bias=c["use_bias"])]


def _depthwise_to_torch(params, state, layer, module, flatten_from):
    return _kernel_bias(params, lambda k: k.reshape(*k.shape[:2], -1).transpose(2, 0, 1)[:, None])


def _depthwise_from_torch(tensors, layer, module, flatten_from):
    m = layer.config["depth_multiplier"]
    return _from_weight(tensors, lambda w: w[:, 0].transpose(1, 2, 0).reshape(
        *w.shape[2:], w.shape[0] // m, m))


# --- LayerNorm, GroupNorm -----------------------------------------------------------------


def _affine_torch(params, state, layer, module, flatten_from):
    out = {}
    if "gamma" in params:
        out["weight"] = f32(params["gamma"])
    if "beta" in params:
        out["bias"] = f32(params["beta"])
    return out


def _affine_from_torch(tensors, layer, module, flatten_from):
    params = {}
    if layer.config["scale"]:
        params["gamma"] = f32(tensors["weight"])
    if layer.config["center"]:
        params["beta"] = f32(tensors["bias"])
    return params, {}


def _affine_keras():
    return (lambda params, state, layer: [f32(params[k]) for k in ("gamma", "beta")
                                          if k in params],
            lambda weights, layer: ({k: f32(w) for k, w in zip(
                [k for k, on in (("gamma", layer.config["scale"]),
                                 ("beta", layer.config["center"])) if on], weights)}, {}))


def _layer_norm_torch(layer, shape):
    c = layer.config
    nn = import_torch().nn
    rank = len(shape)
    axes = sorted(a - 1 if a > 0 else rank + a for a in c["axis"])
    if c["center"] and not c["scale"]:
        raise ValueError("LayerNorm with center but not scale has no PyTorch twin")
    options = dict(eps=c["epsilon"], elementwise_affine=c["scale"], bias=c["center"])
    if rank == 3 and axes == [2]:
        return [_channels_last(nn.LayerNorm, "ChannelwiseLayerNorm", image=True)(
            shape[-1], **options)]
    if rank == 3 or axes != list(range(axes[0], rank)):
        raise ValueError(f"LayerNorm over axes {c['axis']} of per-example shape {shape} has "
                         "no PyTorch twin (PyTorch normalizes the last axes)")
    return [nn.LayerNorm(tuple(shape[a] for a in axes), **options)]


def _group_norm_torch(layer, shape):
    c = layer.config
    nn = import_torch().nn
    if c["center"] != c["scale"]:
        raise ValueError("GroupNorm with only one of center/scale has no PyTorch twin")
    cls = (_channels_last(nn.GroupNorm, "ChannelsLastGroupNorm") if len(shape) == 2
           else nn.GroupNorm)
    return [cls(c["groups"], shape[-1], eps=c["epsilon"], affine=c["scale"])]


# --- Embedding ----------------------------------------------------------------------------


def _embedding_keras(keras, layer, shape):
    if layer.config["padding_idx"] is not None:
        raise ValueError("Embedding with padding_idx (PyTorch's) has no Keras twin")
    return [keras.layers.Embedding(layer.config["input_dim"], layer.config["output_dim"])]


# --- reshaping, dropout, augmentation -----------------------------------------------------


def _adaptive_ops(layer):
    return ("global_avg_pool2d",) if layer.config["output_size"] == (1, 1) else (
        "adaptive_avg_pool2d",)


def entries() -> dict[str, Entry]:
    """The entries this module adds to ``registry.REGISTRY``, by fnlearn layer kind."""
    out: dict[str, Entry] = {k: activation_entry(k) for k in ACTIVATION_KINDS}

    def nn():
        return import_torch().nn

    def weighted(ops_kind):
        return lambda layer: (ops_kind, *act(layer.config.get("activation")))

    out["conv1d"] = Entry(
        weighted("conv1d"), _conv1d_torch, _conv1d_keras,
        lambda p, s, layer, m, f: _kernel_bias(p, lambda k: k.transpose(2, 1, 0)),
        lambda t, layer, m, f: _from_weight(t, lambda w: w.transpose(2, 1, 0)),
        *_keras_weights(("kernel", "bias")))
    out["conv2d_transpose"] = Entry(
        weighted("conv2d_transpose"), _transpose_torch, _transpose_keras,
        lambda p, s, layer, m, f: _kernel_bias(p, lambda k: k.transpose(3, 2, 0, 1)),
        lambda t, layer, m, f: _from_weight(t, lambda w: w.transpose(2, 3, 1, 0)),
        *_keras_weights(("kernel", "bias")))
    # A grouped convolution in both frameworks' vocabulary: PyTorch spells it Conv2d(groups=).
    out["depthwise_conv2d"] = Entry(
        weighted("conv2d"), _depthwise_torch, _depthwise_keras,
        _depthwise_to_torch, _depthwise_from_torch, *_keras_weights(("kernel", "bias")))
    out["layer_norm"] = Entry(
        lambda layer: ("layer_norm",), _layer_norm_torch,
        lambda keras, layer, shape: [keras.layers.LayerNormalization(
            axis=list(layer.config["axis"]), epsilon=layer.config["epsilon"],
            center=layer.config["center"], scale=layer.config["scale"])],
        _affine_torch, _affine_from_torch, *_affine_keras())
    out["group_norm"] = Entry(
        lambda layer: ("group_norm",), _group_norm_torch,
        lambda keras, layer, shape: [keras.layers.GroupNormalization(
            layer.config["groups"], epsilon=layer.config["epsilon"],
            center=layer.config["center"], scale=layer.config["scale"])],
        _affine_torch, _affine_from_torch, *_affine_keras())
    out["embedding"] = Entry(
        lambda layer: ("embedding",),
        lambda layer, shape: [nn().Embedding(layer.config["input_dim"], layer.config[
            "output_dim"], padding_idx=layer.config["padding_idx"])],
        _embedding_keras,
        lambda p, s, layer, m, f: {"weight": f32(p["embeddings"])},
        lambda t, layer, m, f: ({"embeddings": f32(t["weight"])}, {}),
        lambda p, s, layer: [f32(p["embeddings"])],
        lambda weights, layer: ({"embeddings": f32(weights[0])}, {}))
    out["upsampling2d"] = Entry(
        lambda layer: ("upsampling2d",),
        lambda layer, shape: [nn().Upsample(scale_factor=tuple(float(s) for s in layer.config[
            "size"]), mode=layer.config["interpolation"])],
        lambda keras, layer, shape: [keras.layers.UpSampling2D(
            layer.config["size"], interpolation=layer.config["interpolation"])])
    out["zero_padding2d"] = Entry(
        lambda layer: ("zero_pad",),
        lambda layer, shape: [nn().ZeroPad2d(_torch_pads(layer.config["padding"]))],
        lambda keras, layer, shape: [keras.layers.ZeroPadding2D(layer.config["padding"])])
    out["adaptive_avg_pool2d"] = Entry(
        _adaptive_ops,
        lambda layer, shape: [nn().AdaptiveAvgPool2d(layer.config["output_size"])],
        lambda keras, layer, shape: [keras.layers.AdaptiveAveragePooling2D(
            layer.config["output_size"])])
    out["spatial_dropout2d"] = Entry(
        lambda layer: ("spatial_dropout",),
        lambda layer, shape: [nn().Dropout2d(layer.config["rate"])],
        lambda keras, layer, shape: [keras.layers.SpatialDropout2D(layer.config["rate"])])
    out["random_flip"] = Entry(
        lambda layer: ("identity",), lambda layer, shape: [nn().Identity()],
        lambda keras, layer, shape: [keras.layers.RandomFlip(layer.config["mode"])])
    # Keras's RandomCrop does not pad first: at inference both are the identity.
    out["random_crop"] = Entry(lambda layer: ("identity",), lambda layer, shape: [nn().Identity()],
                               lambda keras, layer, shape: [keras.layers.Identity()])
    return out


def _torch_pads(pads: Any) -> tuple[int, int, int, int]:
    (top, bottom), (left, right) = pads
    return left, right, top, bottom

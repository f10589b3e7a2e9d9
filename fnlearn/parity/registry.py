"""One entry per fnlearn layer kind: its ops, its PyTorch and Keras twins, its weights both ways.

A new layer kind is one ``register`` call here (the entries of the layers beyond the
first models are in ``twins``, those of the sequence layers in ``twins_seq``, added
below). Each entry knows

* ``ops(layer)``: the kinds it amounts to in the shared vocabulary of ``graphs``
  (a Dense with a relu is ``("linear", "relu")``);
* ``torch(layer, shape)`` / ``keras(keras, layer, shape)``: modules (layers) that
  compute the same thing on a per-example input ``shape``;
* ``to_torch`` / ``from_torch`` and ``to_keras`` / ``from_keras``: the weights.

Layouts: fnlearn and Keras are NHWC with HWIO kernels; PyTorch is NCHW with OIHW
kernels, so a PyTorch twin of a model with image inputs takes NCHW inputs. The first
Dense after a Flatten of an image flattens (H, W, C) in fnlearn and Keras but
(C, H, W) in PyTorch: its kernel's rows are permuted (``flatten_from``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fnlearn.parity import twins, twins_seq
from fnlearn.parity.graphs import import_torch
from fnlearn.parity.twins import Entry, act, f32, torch_activation

#: One entry per layer kind: its PyTorch and Keras twins and how weights convert both ways.
REGISTRY: dict[str, Entry] = {}


def register(kind: str, entry: Entry) -> None:
    """Adds (or replaces) the converter of fnlearn layer kind ``kind``."""
    REGISTRY[kind] = entry


def pairs(padding, kernel, strides, dilation, shape) -> tuple[tuple[int, int], ...]:
    """Explicit ``((top, bottom), (left, right))`` padding for "valid", "same", an int or pairs."""
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if not isinstance(padding, str):
        return tuple((int(a), int(b)) for a, b in padding)
    if padding.lower() == "valid":
        return ((0, 0), (0, 0))
    out = []
    for size, k, s, d in zip(shape[:2], kernel, strides, dilation):
        extent = (k - 1) * d + 1
        total = max((math.ceil(size / s) - 1) * s + extent - size, 0)
        out.append((total // 2, total - total // 2))
    return tuple(out)


# --- layers without weights ---------------------------------------------------------------


def torch_normalize(mean: float, std: float):
    """A ``torch.nn.Module`` computing ``(x - mean) / std`` in float32, as ``nn.Normalize``."""
    torch = import_torch()

    class Normalize(torch.nn.Module):
        """``(x - mean) / std`` in float32, as fnlearn's ``Normalize``."""

        def __init__(self):
            super().__init__()
            self.mean, self.std = mean, std

        def forward(self, x):
            x = x.to(torch.float32)
            # Divide (not multiply by 1/std) and skip a zero mean: fnlearn does, bit for bit.
            if self.mean != 0:
                x = x - self.mean
            return x / self.std

    return Normalize()


def _normalize_torch(layer, shape):
    return [torch_normalize(layer.config["mean"], layer.config["std"])]


def _normalize_keras(keras, layer, shape):
    mean, std = layer.config["mean"], layer.config["std"]

    def normalize(x):
        x = keras.ops.cast(x, "float32")
        # Divide (not multiply by 1/std) and skip a zero mean: fnlearn does, bit for bit.
        if mean != 0:
            x = x - mean
        return x / std

    return [keras.layers.Lambda(normalize)]


register("normalize", Entry(lambda layer: ("normalize",), _normalize_torch, _normalize_keras))
register("linear", Entry(lambda layer: (), lambda layer, shape: [],
                         lambda keras, layer, shape: []))
def _flatten_keras(keras, layer, shape):
    if layer.config.get("channels_first") and len(shape) == 3:
        raise ValueError("a Flatten in PyTorch's (C, H, W) order (Flatten(channels_first=True)) "
                         "has no Keras twin: Keras flattens (H, W, C)")
    return [keras.layers.Flatten()]


register("flatten", Entry(lambda layer: ("flatten",),
                          lambda layer, shape: [_torch().nn.Flatten()], _flatten_keras))
register("dropout", Entry(lambda layer: ("dropout",),
                          lambda layer, shape: [_torch().nn.Dropout(layer.config["rate"])],
                          lambda keras, layer, shape: [keras.layers.Dropout(
                              layer.config["rate"])]))
def _torch():
    return import_torch()


# --- Dense ----------------------------------------------------------------------------------


def _dense_ops(layer):
    return ("linear", *act(layer.config.get("activation")))


def _dense_torch(layer, shape):
    nn = _torch().nn
    modules = [nn.Linear(shape[-1], layer.config["units"],
                         bias=layer.config.get("bias", True))]
    return modules + [torch_activation(nn, a) for a in act(layer.config.get("activation"))]


def _dense_keras(keras, layer, shape):
    return [keras.layers.Dense(layer.config["units"],
                               activation=twins.keras_activation(keras, layer.config["activation"]),
                               use_bias=layer.config.get("bias", True))]


def _permutation(flatten_from):
    """Row order that maps PyTorch's (C, H, W) flattening onto fnlearn's (H, W, C)."""
    h, w, c = flatten_from
    return np.arange(h * w * c).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


def _dense_to_torch(params, state, layer, module, flatten_from):
    kernel = f32(params["kernel"])
    if flatten_from is not None:
        kernel = kernel[np.argsort(_permutation(flatten_from))]
    out = {"weight": kernel.T}
    if "bias" in params:
        out["bias"] = f32(params["bias"])
    return out


def _dense_from_torch(tensors, layer, module, flatten_from):
    kernel = f32(tensors["weight"]).T
    if flatten_from is not None:
        kernel = kernel[_permutation(flatten_from)]
    params = {"kernel": np.ascontiguousarray(kernel)}
    if tensors.get("bias") is not None:
        params["bias"] = f32(tensors["bias"])
    return params, {}


register("dense", Entry(
    _dense_ops, _dense_torch, _dense_keras, _dense_to_torch, _dense_from_torch,
    lambda params, state, layer: [f32(params[k]) for k in ("kernel", "bias") if k in params],
    lambda weights, layer: ({k: f32(w) for k, w in zip(("kernel", "bias"), weights)}, {})))


# --- Conv2D and pooling ---------------------------------------------------------------------


def _conv_torch(layer, shape):
    c = layer.config
    nn = _torch().nn
    pads = pairs(c["padding"], c["kernel_size"], c["strides"], c["dilation"], shape)
    modules = []
    (top, bottom), (left, right) = pads
    if top != bottom or left != right:
        modules.append(nn.ZeroPad2d((left, right, top, bottom)))
        top = left = 0
    modules.append(nn.Conv2d(shape[-1], c["filters"], tuple(c["kernel_size"]),
                             stride=tuple(c["strides"]), padding=(top, left),
                             dilation=tuple(c["dilation"]), bias=c["use_bias"]))
    return modules + [torch_activation(nn, a) for a in act(c.get("activation"))]


def _conv_keras(keras, layer, shape):
    c = layer.config
    padding = c["padding"]
    layers = []
    if not isinstance(padding, str):
        explicit = pairs(padding, c["kernel_size"], c["strides"], c["dilation"], shape)
        layers.append(keras.layers.ZeroPadding2D(explicit))
        padding = "valid"
    layers.append(keras.layers.Conv2D(c["filters"], tuple(c["kernel_size"]),
                                      strides=tuple(c["strides"]), padding=padding,
                                      dilation_rate=tuple(c["dilation"]),
                                      activation=twins.keras_activation(
                                          keras, c.get("activation") or "linear"),
                                      use_bias=c["use_bias"]))
    return layers


def _conv_to_torch(params, state, layer, module, flatten_from):
    out = {"weight": np.ascontiguousarray(f32(params["kernel"]).transpose(3, 2, 0, 1))}
    if "bias" in params:
        out["bias"] = f32(params["bias"])
    return out


def _conv_from_torch(tensors, layer, module, flatten_from):
    params = {"kernel": np.ascontiguousarray(f32(tensors["weight"]).transpose(2, 3, 1, 0))}
    if tensors.get("bias") is not None:
        params["bias"] = f32(tensors["bias"])
    return params, {}


register("conv2d", Entry(
    lambda layer: ("conv2d", *act(layer.config.get("activation"))),
    _conv_torch, _conv_keras, _conv_to_torch, _conv_from_torch,
    lambda params, state, layer: [f32(params[k]) for k in ("kernel", "bias") if k in params],
    lambda weights, layer: ({k: f32(w) for k, w in zip(("kernel", "bias"), weights)}, {})))


def _pool_torch(kind):
    def build(layer, shape):
        c = layer.config
        nn = _torch().nn
        pads = pairs(c["padding"], c["pool_size"], c["strides"], (1, 1), shape)
        (top, bottom), (left, right) = pads
        if top != bottom or left != right:
            raise ValueError(f"{kind} with asymmetric padding {pads} has no PyTorch twin")
        if kind == "max_pool2d":
            return [nn.MaxPool2d(tuple(c["pool_size"]), tuple(c["strides"]), (top, left))]
        # fnlearn averages the real pixels of a padded window only.
        return [nn.AvgPool2d(tuple(c["pool_size"]), tuple(c["strides"]), (top, left),
                             count_include_pad=False)]
    return build


def _pool_keras(kind):
    def build(keras, layer, shape):
        c = layer.config
        cls = keras.layers.MaxPooling2D if kind == "max_pool2d" else keras.layers.AveragePooling2D
        if not isinstance(c["padding"], str):
            raise ValueError(f"{kind} with explicit padding has no Keras twin")
        return [cls(tuple(c["pool_size"]), tuple(c["strides"]), padding=c["padding"])]
    return build


for _kind in ("max_pool2d", "avg_pool2d"):
    register(_kind, Entry(lambda layer, k=_kind: (k,), _pool_torch(_kind), _pool_keras(_kind)))
register("global_avg_pool2d", Entry(
    lambda layer: ("global_avg_pool2d",),
    lambda layer, shape: [_torch().nn.AdaptiveAvgPool2d(1), _torch().nn.Flatten()],
    lambda keras, layer, shape: [keras.layers.GlobalAveragePooling2D()]))


# --- BatchNorm ------------------------------------------------------------------------------
# fnlearn keeps the decay (the weight of the old running value): Keras's momentum, and one
# minus PyTorch's. Parameters gamma/beta are PyTorch's weight/bias; state mean/var its
# running_mean/running_var.


def _bn_torch(layer, shape):
    c = layer.config
    nn = _torch().nn
    cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
    if c["center"] != c["scale"]:
        raise ValueError("BatchNorm with only one of center/scale has no PyTorch twin")
    return [cls(shape[-1], eps=c["epsilon"], momentum=1.0 - c["decay"], affine=c["scale"])]


def _bn_keras(keras, layer, shape):
    c = layer.config
    return [keras.layers.BatchNormalization(momentum=c["decay"], epsilon=c["epsilon"],
                                            center=c["center"], scale=c["scale"])]


def _bn_params(layer, gamma, beta):
    params = {}
    if layer.config["scale"]:
        params["gamma"] = f32(gamma)
    if layer.config["center"]:
        params["beta"] = f32(beta)
    return params


def _bn_to_torch(params, state, layer, module, flatten_from):
    out = {"running_mean": f32(state["mean"]), "running_var": f32(state["var"])}
    if "gamma" in params:
        out["weight"] = f32(params["gamma"])
    if "beta" in params:
        out["bias"] = f32(params["beta"])
    return out


def _bn_from_torch(tensors, layer, module, flatten_from):
    return (_bn_params(layer, tensors.get("weight"), tensors.get("bias")),
            {"mean": f32(tensors["running_mean"]), "var": f32(tensors["running_var"])})


def _bn_to_keras(params, state, layer):
    weights = [f32(params[k]) for k in ("gamma", "beta") if k in params]
    return weights + [f32(state["mean"]), f32(state["var"])]


def _bn_from_keras(weights, layer):
    weights = list(weights)
    gamma = weights.pop(0) if layer.config["scale"] else None
    beta = weights.pop(0) if layer.config["center"] else None
    return _bn_params(layer, gamma, beta), {"mean": f32(weights[0]), "var": f32(weights[1])}


register("batch_norm", Entry(lambda layer: ("batch_norm",), _bn_torch, _bn_keras, _bn_to_torch,
                             _bn_from_torch, _bn_to_keras, _bn_from_keras))


for _kind, _entry in {**twins.entries(), **twins_seq.entries()}.items():
    register(_kind, _entry)


def entry(layer, position: int, target: str) -> Entry:
    """The registered entry for ``layer``, or a clear error naming it and what is supported."""
    if "graph" in layer.config:
        raise ValueError(f"fnlearn layer {layer.kind!r} at position {position} is a graph model: "
                         f"only chains (serial) have {target} twins so far")
    found = REGISTRY.get(layer.kind)
    if found is None or "flax_module" in layer.config:
        raise ValueError(f"fnlearn layer {layer.kind!r} at position {position} has no "
                         f"{target} counterpart; supported kinds: {', '.join(sorted(REGISTRY))}")
    return found


def describe(layer: Any) -> str:
    act = layer.config.get("activation")
    return f"{layer.kind}" + (f" (activation {act})" if act not in (None, "linear") else "")

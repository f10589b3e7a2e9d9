"""Import a PyTorch or Keras model into fnlearn in one call, with its weights and a parity report.

``from_torch(module, input_shape)`` reads a live ``torch.nn.Module`` (an
``nn.Sequential``, or a module with its own ``forward``, through ``torch.fx``),
``from_keras(keras_model)`` a ``keras.Sequential`` or linear functional model. Each
builds the fnlearn model op by op, converts the weights (and BatchNorm statistics)
with the registered converters, runs both models on a random batch and reports the
worst errors. An operation outside the vocabulary is refused before anything is
built, naming where it sits.

PyTorch images are NCHW; the fnlearn model takes NHWC, so ``input_shape=(1, 28, 28)``
gives a model for ``(28, 28, 1)`` inputs, and the first Dense after a Flatten has its
kernel rows permuted accordingly. A Flatten that no Linear follows becomes a
``Flatten(channels_first=True)``, whose outputs are in PyTorch's (C, H, W) order.

A report that fails raises ``ImportMismatchError`` (``strict=False``: a warning), so a
wrong import is never used by accident.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fnlearn import nn
from fnlearn.nn.core import Layer, apply
from fnlearn.parity.compare import compare, to_numpy
from fnlearn.parity.convert import variables_from_keras, variables_from_torch
from fnlearn.parity.graphs import (
    ELEMENTWISE_KINDS,
    Op,
    import_keras,
    import_torch,
    keras_ops,
    torch_ops,
)


class Report(NamedTuple):
    """How closely the imported model computes its source's function, on one random batch."""

    source: str
    batch_shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    passed: bool
    rtol: float

    def __str__(self) -> str:
        return (f"{self.source} -> fnlearn, forward on a random batch of shape "
                f"{self.batch_shape}: max abs error {self.max_abs_error:.3g}, max rel error "
                f"{self.max_rel_error:.3g} ({'ok' if self.passed else 'MISMATCH'}: "
                f"tolerance {self.rtol:g} of the largest |output|)")


class Imported(NamedTuple):
    """What an import returns: the fnlearn model, its parameters and state, and the report."""

    model: Layer
    params: dict
    model_state: dict
    report: Report


class ImportMismatchError(ValueError):
    """The imported model does not compute what its source computes; ``.imported`` has it."""

    def __init__(self, message: str, imported: Imported):
        super().__init__(message)
        self.imported = imported


def _checked(imported: Imported, strict: bool) -> Imported:
    """``imported``, after a failed report has raised (``strict``) or warned."""
    if imported.report.passed:
        return imported
    message = (f"the import does not compute what its source computes: {imported.report}; "
               "compare layer by layer (fnlearn.parity.compare) to find the step at fault, or "
               "pass strict=False to get the model anyway with a warning")
    if strict:
        raise ImportMismatchError(message, imported)
    warnings.warn(message, UserWarning, stacklevel=3)
    return imported


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (int(value), int(value))


def _torch_layer(op: Op) -> Layer | None:
    m, c = op.obj, op.config
    if op.kind == "linear":
        return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if op.kind == "conv2d" and m.groups > 1 and m.groups == m.in_channels:
        return _torch_depthwise(op)
    if op.kind == "conv2d":
        if m.groups != 1 or m.padding_mode != "zeros":
            raise ValueError(f"Conv2d at {op.where} uses groups={m.groups}, "
                             f"padding_mode={m.padding_mode!r}: not supported")
        extra = c.get("pad")
        if isinstance(m.padding, str):
            if extra is not None and m.padding != "valid":
                raise ValueError(f"Conv2d at {op.where} pads {m.padding!r} after a ZeroPad2d: "
                                 "not supported")
            padding = m.padding if extra is None else extra
        else:
            extra = extra or ((0, 0), (0, 0))
            padding = tuple((p + a, p + b) for p, (a, b) in zip(_pair(m.padding), extra))
        return nn.Conv2D(m.out_channels, _pair(m.kernel_size), strides=_pair(m.stride),
                         padding=padding, dilation=_pair(m.dilation),
                         use_bias=m.bias is not None, init="torch")
    if op.kind == "conv2d_transpose":
        if m.groups != 1 or m.padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d at {op.where} uses groups={m.groups}, "
                             f"padding_mode={m.padding_mode!r}: not supported")
        return nn.Conv2DTranspose(m.out_channels, _pair(m.kernel_size), _pair(m.stride),
                                  tuple((p, p) for p in _pair(m.padding)),
                                  output_padding=_pair(m.output_padding),
                                  dilation=_pair(m.dilation), use_bias=m.bias is not None,
                                  init="torch")
    if op.kind == "batch_norm":
        if not m.track_running_stats or m.momentum is None:
            raise ValueError(f"{type(m).__name__} at {op.where} keeps no running statistics "
                             "(or a cumulative average): not supported")
        return nn.BatchNorm(momentum=m.momentum, epsilon=m.eps, convention="torch",
                            center=m.affine, scale=m.affine)
    if op.kind in ("max_pool2d", "avg_pool2d"):
        window = _pair(m.kernel_size if m is not None else c["kernel_size"])
        stride = _pair((m.stride if m is not None else c["stride"]) or window)
        pad = _pair(m.padding if m is not None else c["padding"])
        if op.kind == "avg_pool2d" and any(pad) and (m is None or m.count_include_pad):
            raise ValueError(f"average pooling at {op.where} counts padding "
                             "(count_include_pad=True); fnlearn averages real pixels only")
        if m is not None and (getattr(m, "ceil_mode", False) or getattr(m, "dilation", 1) != 1):
            raise ValueError(f"{type(m).__name__} at {op.where} uses ceil_mode or dilation: "
                             "not supported")
        layer = nn.MaxPool2D if op.kind == "max_pool2d" else nn.AvgPool2D
        return layer(window, strides=stride, padding=tuple((p, p) for p in pad))
    if op.kind == "global_avg_pool2d":
        return nn.GlobalAveragePooling2D()
    if op.kind == "adaptive_avg_pool2d":
        return nn.AdaptiveAvgPool2D(_pair(m.output_size))
    if op.kind == "dropout":
        return nn.Dropout(float(m.p if m is not None else c["p"]))
    if op.kind == "spatial_dropout":
        return nn.SpatialDropout2D(float(m.p if m is not None else c["p"]))
    if op.kind == "zero_pad":
        left, right, top, bottom = m.padding
        return nn.ZeroPadding2D(((top, bottom), (left, right)))
    if op.kind == "leaky_relu":
        return nn.LeakyReLU(float(m.negative_slope if m is not None else c["negative_slope"]))
    if op.kind == "elu":
        return nn.ELU(float(m.alpha if m is not None else c["alpha"]))
    if op.kind == "layer_norm":
        if m.elementwise_affine and m.bias is None:
            return nn.LayerNorm(tuple(range(-len(m.normalized_shape), 0)), m.eps, center=False,
                                convention="torch")
        return nn.LayerNorm(tuple(range(-len(m.normalized_shape), 0)), m.eps,
                            center=m.elementwise_affine, scale=m.elementwise_affine,
                            convention="torch")
    if op.kind == "group_norm":
        return nn.GroupNorm(m.num_groups, m.eps, center=m.affine, scale=m.affine,
                            convention="torch")
    if op.kind == "embedding":
        return nn.Embedding(m.num_embeddings, m.embedding_dim, init="torch",
                            padding_idx=m.padding_idx)
    if op.kind == "upsampling2d":
        if m.scale_factor is None or m.mode not in ("nearest", "bilinear") or m.align_corners:
            raise ValueError(f"Upsample at {op.where} (size={m.size}, mode={m.mode!r}, "
                             f"align_corners={m.align_corners}) is not supported: give "
                             "scale_factor with mode 'nearest' or 'bilinear'")
        scale = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor,) * 2
        if any(float(f) != int(f) for f in scale):
            raise ValueError(f"Upsample at {op.where} scales by {m.scale_factor}: only whole "
                             "factors are supported")
        return nn.UpSampling2D(tuple(int(f) for f in scale), m.mode)
    if op.kind == "normalize":
        return nn.Normalize(m.mean, m.std)
    if op.kind == "flatten":
        return nn.Flatten(channels_first=not c.get("linear_follows", False))
    if op.kind in ("relu", "softmax", "log_softmax", "tanh", "sigmoid", "gelu", "gelu_tanh",
                   "silu", "hard_sigmoid", "relu6"):
        return nn.Activation(op.kind)
    if op.kind == "identity":
        return None
    raise ValueError(f"{op.kind} at {op.where} cannot be imported yet; convert its weights "
                     "into an fnlearn model you build with fnlearn.parity.variables_from_torch")


def _torch_depthwise(op: Op) -> Layer:
    """A ``Conv2d`` with one group per input channel, as a ``DepthwiseConv2D``."""
    m, extra = op.obj, op.config.get("pad")
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ValueError(f"Conv2d at {op.where} pads {m.padding!r} in mode "
                         f"{m.padding_mode!r}: not supported")
    extra = extra or ((0, 0), (0, 0))
    padding = tuple((p + a, p + b) for p, (a, b) in zip(_pair(m.padding), extra))
    return nn.DepthwiseConv2D(_pair(m.kernel_size), _pair(m.stride), padding,
                              depth_multiplier=m.out_channels // m.in_channels,
                              dilation=_pair(m.dilation), use_bias=m.bias is not None,
                              init="torch")


def _mark_flattens(ops: list[Op]) -> list[Op]:
    """Each flatten op told whether a Linear follows it (whose rows can absorb the order)."""
    marked = []
    for i, op in enumerate(ops):
        if op.kind == "flatten":
            after = next((o.kind for o in ops[i + 1:] if o.kind not in ELEMENTWISE_KINDS), None)
            op = op._replace(config={**op.config, "linear_follows": after == "linear"})
        marked.append(op)
    return marked


def _fold_padding(ops: list[Op], framework: str) -> list[Op]:
    """Ops with each zero padding folded into the convolution it precedes (``config["pad"]``)."""
    folded, pending = [], None
    for op in ops:
        if op.kind == "zero_pad":
            if framework == "PyTorch":
                left, right, top, bottom = op.obj.padding
                pad = ((top, bottom), (left, right))
            else:
                pad = tuple(tuple(int(p) for p in pair) for pair in op.obj.padding)
            pending = ((pad, op.where), op)
            continue
        if pending is not None:
            if op.kind == "conv2d":
                op = op._replace(config={**op.config, "pad": pending[0][0]})
            else:  # a padding of its own: a ZeroPadding2D
                folded.append(pending[1])
            pending = None
        folded.append(op)
    if pending is not None:
        folded.append(pending[1])
    return folded


def _fnlearn_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    return (*shape[1:], shape[0]) if len(shape) == 3 else shape


def _report(source: str, reference, model, params, state, x_other, x_fnlearn, rtol) -> Report:
    ours = np.asarray(apply(model, params, x_fnlearn, state=state)[0])
    result = compare("outputs", ours, reference, rtol=rtol, atol=rtol * float(
        np.abs(reference).max() or 1.0))
    return Report(source, tuple(x_other.shape), result.max_abs_error, result.max_rel_error,
                  result.passed, rtol)


def from_torch(module, input_shape: Sequence[int], *, batch_size: int = 8, seed: int = 0,
               rtol: float = 1e-5, strict: bool = True) -> Imported:
    """The fnlearn model, parameters and state computing what ``module`` computes.

    Args:
      module: a ``torch.nn.Module`` whose graph is a chain of supported operations.
      input_shape: its per-example input shape, PyTorch's layout (``(1, 28, 28)``).
      batch_size, seed: the random batch the report runs both models on.
      rtol: the report's tolerance, relative to the largest output.
      strict: raise when the report fails; False warns and returns the import anyway.

    Returns:
      ``Imported(model, params, model_state, report)``.

    Raises:
      ValueError: an unsupported operation or a branching graph (the node is named).
      ImportMismatchError: the report failed (with ``strict``).
    """
    torch = import_torch()
    # Refuses before anything is built.
    ops = _mark_flattens(_fold_padding(torch_ops(module), "PyTorch"))
    layers = [layer for layer in map(_torch_layer, ops) if layer is not None]
    model = nn.serial(*layers)
    shape = _fnlearn_shape(input_shape)
    params, state = variables_from_torch(module, model=model, input_shape=shape)
    x = np.random.default_rng(seed).normal(size=(batch_size, *input_shape)).astype(np.float32)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        reference = to_numpy(module(torch.from_numpy(x)))
    if reference.ndim == 4:  # an image out: NCHW in PyTorch, NHWC in fnlearn
        reference = reference.transpose(0, 2, 3, 1)
    module.train(was_training)
    x_nhwc = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    return _checked(Imported(model, params, state, _report(
        type(module).__name__, reference, model, params, state, x, x_nhwc, rtol)), strict)


def _keras_layer(layer, pad=None) -> Layer | None:
    kind = type(layer).__name__
    cfg = layer.get_config()
    activation = cfg.get("activation") if isinstance(cfg.get("activation"), str) else None
    if kind == "Dense":
        return nn.Dense(cfg["units"], activation=activation, use_bias=cfg["use_bias"])
    if kind == "Conv2D":
        if pad is not None and cfg["padding"] != "valid":
            raise ValueError(f"Conv2D {layer.name!r} pads {cfg['padding']!r} after a "
                             "ZeroPadding2D: not supported")
        return nn.Conv2D(cfg["filters"], tuple(cfg["kernel_size"]),
                         strides=tuple(cfg["strides"]),
                         padding=cfg["padding"] if pad is None else pad,
                         dilation=tuple(cfg["dilation_rate"]), activation=activation,
                         use_bias=cfg["use_bias"])
    if kind in ("Conv1D", "Conv2DTranspose", "DepthwiseConv2D"):
        return _keras_conv(kind, cfg, activation, pad)
    if kind == "AdaptiveAveragePooling2D":
        size = tuple(cfg["output_size"])
        return nn.GlobalAveragePooling2D() if size == (1, 1) else nn.AdaptiveAvgPool2D(size)
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        cls = nn.MaxPool2D if kind == "MaxPooling2D" else nn.AvgPool2D
        return cls(tuple(cfg["pool_size"]), strides=tuple(cfg["strides"] or cfg["pool_size"]),
                   padding=cfg["padding"])
    if kind == "GlobalAveragePooling2D":
        return nn.GlobalAveragePooling2D()
    if kind == "BatchNormalization":
        return nn.BatchNorm(momentum=cfg["momentum"], epsilon=cfg["epsilon"],
                            center=cfg["center"], scale=cfg["scale"])
    if kind == "Flatten":
        return nn.Flatten()
    if kind == "Dropout":
        return nn.Dropout(cfg["rate"])
    if kind == "SpatialDropout2D":
        return nn.SpatialDropout2D(cfg["rate"])
    if kind == "ZeroPadding2D":
        return nn.ZeroPadding2D(tuple(tuple(int(p) for p in pair) for pair in cfg["padding"]))
    if kind == "LeakyReLU":
        return nn.LeakyReLU(cfg["negative_slope"])
    if kind == "ELU":
        return nn.ELU(cfg["alpha"])
    if kind == "LayerNormalization":
        axis = cfg["axis"] if isinstance(cfg["axis"], list | tuple) else (cfg["axis"],)
        return nn.LayerNorm(tuple(axis), cfg["epsilon"], center=cfg["center"],
                            scale=cfg["scale"])
    if kind == "GroupNormalization":
        return nn.GroupNorm(cfg["groups"], cfg["epsilon"], center=cfg["center"],
                            scale=cfg["scale"])
    if kind == "Embedding":
        return nn.Embedding(cfg["input_dim"], cfg["output_dim"])
    if kind == "UpSampling2D":
        return nn.UpSampling2D(tuple(cfg["size"]), cfg["interpolation"])
    if kind == "RandomFlip":
        return nn.RandomFlip(cfg["mode"])
    if kind == "Identity":
        return None
    if kind == "ReLU":
        return nn.ReLU()
    if kind == "Softmax":
        return nn.Softmax()
    if kind == "Activation":
        return nn.Activation(activation)
    if kind == "Reshape":
        return nn.Reshape(tuple(cfg["target_shape"]))
    if kind == "Rescaling":
        scale, offset = float(cfg["scale"]), float(cfg["offset"])
        return nn.Normalize(-offset / scale, 1.0 / scale)
    raise ValueError(f"{kind} layer {layer.name!r} cannot be imported (a Lambda's function "
                     "is opaque); build that step in fnlearn and convert the weights with "
                     "fnlearn.parity.variables_from_keras")


def _keras_conv(kind: str, cfg: dict, activation, pad) -> Layer:
    padding = cfg["padding"] if pad is None else pad
    common = dict(dilation=tuple(cfg["dilation_rate"]), activation=activation,
                  use_bias=cfg["use_bias"])
    if kind == "Conv1D":
        return nn.Conv1D(cfg["filters"], cfg["kernel_size"][0], cfg["strides"][0], padding,
                         **{**common, "dilation": cfg["dilation_rate"][0]})
    if kind == "DepthwiseConv2D":
        return nn.DepthwiseConv2D(tuple(cfg["kernel_size"]), tuple(cfg["strides"]), padding,
                                  depth_multiplier=cfg["depth_multiplier"], **common)
    extra = cfg["output_padding"]
    return nn.Conv2DTranspose(cfg["filters"], tuple(cfg["kernel_size"]), tuple(cfg["strides"]),
                              padding, output_padding=None if extra is None else tuple(extra),
                              **common)


def from_keras(keras_model, *, batch_size: int = 8, seed: int = 0,
               rtol: float = 1e-5, strict: bool = True) -> Imported:
    """The fnlearn model, parameters and state computing what ``keras_model`` computes.

    Args:
      keras_model: a built ``keras.Sequential`` or linear functional model.
      batch_size, seed, rtol: the report's random batch and tolerance.
      strict: raise when the report fails; False warns and returns the import anyway.

    Returns:
      ``Imported(model, params, model_state, report)``.

    Raises:
      ImportMismatchError: the report failed (with ``strict``).
    """
    import_keras()
    # Refuses unsupported layers and branches before anything is built.
    ops = _fold_padding(keras_ops(keras_model), "Keras")
    layers = [_keras_layer(op.obj, op.config.get("pad")) for op in ops if op.obj is not None]
    model = nn.serial(*[layer for layer in layers if layer is not None])
    shape = tuple(int(d) for d in keras_model.input_shape[1:])
    params, state = variables_from_keras(keras_model, model=model, input_shape=shape)
    x = np.random.default_rng(seed).normal(size=(batch_size, *shape)).astype(np.float32)
    reference = to_numpy(keras_model(x, training=False))
    return _checked(Imported(model, params, state, _report(
        keras_model.name, reference, model, params, state, x, x, rtol)), strict)



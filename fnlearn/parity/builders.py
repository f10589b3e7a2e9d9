"""What each imported PyTorch operation or Keras layer becomes in fnlearn: two registries.

``TORCH_BUILDERS`` maps a kind of the shared vocabulary (``graphs``: ``"conv2d"``,
``"batch_norm"``, ``"relu"``...) to a function of the ``Op`` (the module or the
function's settings, where it sits) returning the fnlearn layer, or None for an
operation that computes nothing at inference (``Identity``). ``KERAS_BUILDERS`` maps a
Keras layer class name to a function of the layer and its ``Op``. The weights then
come from the layer kind's ``registry`` entry (``from_torch``, ``from_keras``).

A new layer kind plugs into both importers with ``register_torch_import`` and
``register_keras_import``: the importers look nothing up anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from fnlearn import nn
from fnlearn.nn.core import Layer
from fnlearn.parity.graphs import KERAS_LAYERS, TORCH_MODULES, Op


class Part(NamedTuple):
    """One of several fnlearn layers a module imports as, in order (an ``nn.LSTM`` with
    ``num_layers=2`` is two recurrent layers): named ``<module>.<suffix>``, its weights
    converted from ``source`` (None: it has none)."""

    suffix: str
    layer: Layer
    source: Any


TorchBuilder = Callable[[Op], "Layer | list[Part] | None"]
KerasBuilder = Callable[[Any, Op], Layer | None]
#: What ``from_torch`` builds for each PyTorch operation kind (``register_torch_import`` adds).
TORCH_BUILDERS: dict[str, TorchBuilder] = {}
#: What ``from_keras`` builds for each Keras layer class (``register_keras_import`` adds).
KERAS_BUILDERS: dict[str, KerasBuilder] = {}
#: Keras layer classes called with several positional tensors (``mha(query, value)``): their
#: fnlearn layer takes them as one tuple (one, when they are all the same tensor).
KERAS_POSITIONAL: set[str] = set()


def register_torch_import(kind: str, build: TorchBuilder, *,
                          module_types: tuple[str, ...] = ()) -> None:
    """Teaches ``from_torch`` an operation: ``build(op)`` gives its fnlearn layer.

    Args:
      kind: the operation's kind in the shared vocabulary.
      build: ``op -> Layer | list[Part] | None``; ``op.obj`` is the module (None for a
        function, whose arguments are in ``op.config``), ``op.where`` names it for messages.
      module_types: ``torch.nn.Module`` class names that are this kind (``("LSTM",)``):
        they are traced as one operation, not through their ``forward``.
    """
    for name in module_types:
        TORCH_MODULES[name] = kind
    TORCH_BUILDERS[kind] = build


def register_keras_import(class_name: str, build: KerasBuilder, *, kind: str | None = None,
                          positional: bool = False) -> None:
    """Teaches ``from_keras`` a layer class: ``build(layer, op)`` gives its fnlearn layer.

    ``op.config["pad"]`` holds a ``ZeroPadding2D`` folded into a convolution,
    ``op.config["call"]`` the call's keyword arguments that are not tensors,
    ``op.config["mask_value"]`` the value a recurrent layer finds masked steps by.
    ``positional``: the layer may be called with several tensors (``KERAS_POSITIONAL``).
    """
    KERAS_LAYERS[class_name] = kind or class_name.lower()
    KERAS_BUILDERS[class_name] = build
    if positional:
        KERAS_POSITIONAL.add(class_name)


def torch_layer(op: Op) -> Layer | list[Part] | None:
    """The fnlearn layer (or layers) of one PyTorch operation (None: the identity)."""
    build = TORCH_BUILDERS.get(op.kind)
    if build is None:
        raise ValueError(f"{op.kind} at {op.where} cannot be imported yet; convert its weights "
                         "into an fnlearn model you build with fnlearn.parity.variables_from_torch")
    return build(op)


def keras_layer(layer, op: Op) -> Layer | None:
    """The fnlearn layer of one Keras layer (None: the identity at inference)."""
    build = KERAS_BUILDERS.get(type(layer).__name__)
    if build is None:
        raise ValueError(f"{type(layer).__name__} layer {layer.name!r} cannot be imported (a "
                         "Lambda's function is opaque); build that step in fnlearn and convert "
                         "the weights with fnlearn.parity.variables_from_keras")
    return build(layer, op)


def pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (int(value), int(value))


# --- PyTorch --------------------------------------------------------------------------------


def _setting(op: Op, attribute: str, key: str | None = None):
    """A module's attribute, or the same setting of a function call (``op.config``)."""
    return getattr(op.obj, attribute) if op.obj is not None else op.config[key or attribute]


def _linear(op: Op) -> Layer:
    m = op.obj
    return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)


def _conv2d(op: Op) -> Layer:
    m, extra = op.obj, op.config.get("pad")
    if m.padding_mode != "zeros":
        raise ValueError(f"Conv2d at {op.where} uses padding_mode={m.padding_mode!r}: "
                         "not supported")
    if isinstance(m.padding, str):
        if extra is not None and m.padding != "valid":
            raise ValueError(f"Conv2d at {op.where} pads {m.padding!r} after a ZeroPad2d: "
                             "not supported")
        padding = m.padding if extra is None else extra
    else:
        extra = extra or ((0, 0), (0, 0))
        padding = tuple((p + a, p + b) for p, (a, b) in zip(pair(m.padding), extra))
    if m.groups > 1 and m.groups == m.in_channels:
        if isinstance(padding, str):
            padding = padding.lower()
        return nn.DepthwiseConv2D(pair(m.kernel_size), pair(m.stride), padding,
                                  depth_multiplier=m.out_channels // m.in_channels,
                                  dilation=pair(m.dilation), use_bias=m.bias is not None,
                                  init="torch")
    return nn.Conv2D(m.out_channels, pair(m.kernel_size), strides=pair(m.stride),
                     padding=padding, dilation=pair(m.dilation), groups=m.groups,
                     use_bias=m.bias is not None, init="torch")


def _conv2d_transpose(op: Op) -> Layer:
    m = op.obj
    if m.groups != 1 or m.padding_mode != "zeros":
        raise ValueError(f"ConvTranspose2d at {op.where} uses groups={m.groups}, "
                         f"padding_mode={m.padding_mode!r}: not supported")
    return nn.Conv2DTranspose(m.out_channels, pair(m.kernel_size), pair(m.stride),
                              tuple((p, p) for p in pair(m.padding)),
                              output_padding=pair(m.output_padding),
                              dilation=pair(m.dilation), use_bias=m.bias is not None,
                              init="torch")


def _batch_norm(op: Op) -> Layer:
    m = op.obj
    if not m.track_running_stats or m.momentum is None:
        raise ValueError(f"{type(m).__name__} at {op.where} keeps no running statistics "
                         "(or a cumulative average): not supported")
    return nn.BatchNorm(momentum=m.momentum, epsilon=m.eps, convention="torch",
                        center=m.affine, scale=m.affine)


def _pool(op: Op) -> Layer:
    m, c = op.obj, op.config
    window = pair(m.kernel_size if m is not None else c["kernel_size"])
    stride = pair((m.stride if m is not None else c["stride"]) or window)
    pad = pair(m.padding if m is not None else c["padding"])
    if op.kind == "avg_pool2d" and any(pad) and (m is None or m.count_include_pad):
        raise ValueError(f"average pooling at {op.where} counts padding "
                         "(count_include_pad=True); fnlearn averages real pixels only")
    if m is not None and (getattr(m, "ceil_mode", False) or getattr(m, "dilation", 1) != 1):
        raise ValueError(f"{type(m).__name__} at {op.where} uses ceil_mode or dilation: "
                         "not supported")
    layer = nn.MaxPool2D if op.kind == "max_pool2d" else nn.AvgPool2D
    return layer(window, strides=stride, padding=tuple((p, p) for p in pad))


def _layer_norm(op: Op) -> Layer:
    m = op.obj
    axes = tuple(range(-len(m.normalized_shape), 0))
    if m.elementwise_affine and m.bias is None:
        return nn.LayerNorm(axes, m.eps, center=False, convention="torch")
    return nn.LayerNorm(axes, m.eps, center=m.elementwise_affine, scale=m.elementwise_affine,
                        convention="torch")


def _upsampling(op: Op) -> Layer:
    m = op.obj
    if m.scale_factor is None or m.mode not in ("nearest", "bilinear") or m.align_corners:
        raise ValueError(f"Upsample at {op.where} (size={m.size}, mode={m.mode!r}, "
                         f"align_corners={m.align_corners}) is not supported: give "
                         "scale_factor with mode 'nearest' or 'bilinear'")
    scale = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor,) * 2
    if any(float(f) != int(f) for f in scale):
        raise ValueError(f"Upsample at {op.where} scales by {m.scale_factor}: only whole "
                         "factors are supported")
    return nn.UpSampling2D(tuple(int(f) for f in scale), m.mode)


def _zero_pad(op: Op) -> Layer:
    left, right, top, bottom = op.obj.padding
    return nn.ZeroPadding2D(((top, bottom), (left, right)))


def _torch_builders() -> dict[str, TorchBuilder]:
    out: dict[str, TorchBuilder] = {
        "linear": _linear, "conv2d": _conv2d, "conv2d_transpose": _conv2d_transpose,
        "batch_norm": _batch_norm, "max_pool2d": _pool, "avg_pool2d": _pool,
        "global_avg_pool2d": lambda op: nn.GlobalAveragePooling2D(),
        "adaptive_avg_pool2d": lambda op: nn.AdaptiveAvgPool2D(pair(op.obj.output_size)),
        "dropout": lambda op: nn.Dropout(float(_setting(op, "p"))),
        "spatial_dropout": lambda op: nn.SpatialDropout2D(float(_setting(op, "p"))),
        "zero_pad": _zero_pad,
        "leaky_relu": lambda op: nn.LeakyReLU(float(_setting(op, "negative_slope"))),
        "elu": lambda op: nn.ELU(float(_setting(op, "alpha"))),
        "layer_norm": _layer_norm,
        "group_norm": lambda op: nn.GroupNorm(op.obj.num_groups, op.obj.eps,
                                              center=op.obj.affine, scale=op.obj.affine,
                                              convention="torch"),
        "embedding": lambda op: nn.Embedding(op.obj.num_embeddings, op.obj.embedding_dim,
                                             init="torch", padding_idx=op.obj.padding_idx),
        "upsampling2d": _upsampling,
        "normalize": lambda op: nn.Normalize(op.obj.mean, op.obj.std),
        "flatten": lambda op: nn.Flatten(channels_first=not op.config.get("linear_follows",
                                                                         False)),
        "identity": lambda op: None,
    }
    for kind in ("relu", "softmax", "log_softmax", "tanh", "sigmoid", "gelu", "gelu_tanh",
                 "silu", "hard_sigmoid", "relu6"):
        out[kind] = lambda op, kind=kind: nn.Activation(kind)
    return out


TORCH_BUILDERS.update(_torch_builders())


# --- Keras ----------------------------------------------------------------------------------


def _activation(cfg: dict) -> str | None:
    return cfg.get("activation") if isinstance(cfg.get("activation"), str) else None


def _keras_conv2d(layer, op: Op) -> Layer:
    cfg, pad = layer.get_config(), op.config.get("pad")
    if pad is not None and cfg["padding"] != "valid":
        raise ValueError(f"Conv2D {layer.name!r} pads {cfg['padding']!r} after a "
                         "ZeroPadding2D: not supported")
    return nn.Conv2D(cfg["filters"], tuple(cfg["kernel_size"]), strides=tuple(cfg["strides"]),
                     padding=cfg["padding"] if pad is None else pad,
                     dilation=tuple(cfg["dilation_rate"]), groups=cfg.get("groups", 1),
                     activation=_activation(cfg), use_bias=cfg["use_bias"])


def _keras_conv_more(layer, op: Op) -> Layer:
    kind, cfg, pad = type(layer).__name__, layer.get_config(), op.config.get("pad")
    padding = cfg["padding"] if pad is None else pad
    common = dict(dilation=tuple(cfg["dilation_rate"]), activation=_activation(cfg),
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


def _keras_pool(layer, op: Op) -> Layer:
    cfg = layer.get_config()
    cls = nn.MaxPool2D if type(layer).__name__ == "MaxPooling2D" else nn.AvgPool2D
    return cls(tuple(cfg["pool_size"]), strides=tuple(cfg["strides"] or cfg["pool_size"]),
               padding=cfg["padding"])


def _keras_adaptive(layer, op: Op) -> Layer:
    size = tuple(layer.get_config()["output_size"])
    return nn.GlobalAveragePooling2D() if size == (1, 1) else nn.AdaptiveAvgPool2D(size)


def _keras_layer_norm(layer, op: Op) -> Layer:
    cfg = layer.get_config()
    axis = cfg["axis"] if isinstance(cfg["axis"], list | tuple) else (cfg["axis"],)
    return nn.LayerNorm(tuple(axis), cfg["epsilon"], center=cfg["center"], scale=cfg["scale"])


def _keras_rescaling(layer, op: Op) -> Layer:
    cfg = layer.get_config()
    scale, offset = float(cfg["scale"]), float(cfg["offset"])
    return nn.Normalize(-offset / scale, 1.0 / scale)


def _keras_concatenate(layer, op: Op) -> Layer:
    return nn.Concatenate(layer.get_config()["axis"])


def _keras_builders() -> dict[str, KerasBuilder]:
    def cfg_of(build):
        return lambda layer, op: build(layer.get_config())

    out: dict[str, KerasBuilder] = {
        "Dense": cfg_of(lambda c: nn.Dense(c["units"], activation=_activation(c),
                                           use_bias=c["use_bias"])),
        "Conv2D": _keras_conv2d, "Conv1D": _keras_conv_more,
        "Conv2DTranspose": _keras_conv_more, "DepthwiseConv2D": _keras_conv_more,
        "AdaptiveAveragePooling2D": _keras_adaptive,
        "MaxPooling2D": _keras_pool, "AveragePooling2D": _keras_pool,
        "GlobalAveragePooling2D": lambda layer, op: nn.GlobalAveragePooling2D(),
        "BatchNormalization": cfg_of(lambda c: nn.BatchNorm(
            momentum=c["momentum"], epsilon=c["epsilon"], center=c["center"],
            scale=c["scale"])),
        "Flatten": lambda layer, op: nn.Flatten(),
        "Dropout": cfg_of(lambda c: nn.Dropout(c["rate"])),
        "SpatialDropout2D": cfg_of(lambda c: nn.SpatialDropout2D(c["rate"])),
        "ZeroPadding2D": cfg_of(lambda c: nn.ZeroPadding2D(
            tuple(tuple(int(p) for p in pair) for pair in c["padding"]))),
        "LeakyReLU": cfg_of(lambda c: nn.LeakyReLU(c["negative_slope"])),
        "ELU": cfg_of(lambda c: nn.ELU(c["alpha"])),
        "LayerNormalization": _keras_layer_norm,
        "GroupNormalization": cfg_of(lambda c: nn.GroupNorm(
            c["groups"], c["epsilon"], center=c["center"], scale=c["scale"])),
        "Embedding": cfg_of(lambda c: nn.Embedding(c["input_dim"], c["output_dim"])),
        "UpSampling2D": cfg_of(lambda c: nn.UpSampling2D(tuple(c["size"]), c["interpolation"])),
        "RandomFlip": cfg_of(lambda c: nn.RandomFlip(c["mode"])),
        "Identity": lambda layer, op: None,
        "ReLU": lambda layer, op: nn.ReLU(),
        "Softmax": lambda layer, op: nn.Softmax(),
        "Activation": cfg_of(lambda c: nn.Activation(_activation(c))),
        "Reshape": cfg_of(lambda c: nn.Reshape(tuple(c["target_shape"]))),
        "Rescaling": _keras_rescaling,
        "Add": lambda layer, op: nn.Add(), "Subtract": lambda layer, op: nn.Subtract(),
        "Multiply": lambda layer, op: nn.Multiply(), "Average": lambda layer, op: nn.Average(),
        "Maximum": lambda layer, op: nn.Maximum(), "Minimum": lambda layer, op: nn.Minimum(),
        "Concatenate": _keras_concatenate,
    }
    return out


KERAS_BUILDERS.update(_keras_builders())
for _name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"):
    KERAS_LAYERS.setdefault(_name, _name.lower())

"""Convolution and pooling layers: Conv2D, MaxPool2D, AvgPool2D, GlobalAveragePooling2D, Reshape.

Activations are NHWC (batch, height, width, channels) and kernels HWIO (height,
width, in, out), as in JAX and Keras; PyTorch's NCHW/OIHW differ by a transpose.
All layers are stateless ``(init, apply)`` pairs (see ``fnlearn.nn.core``).

``padding`` is ``"valid"``, ``"same"`` (Keras/TensorFlow: output ``ceil(n / stride)``,
the odd pixel of padding at the end) or explicit ``((top, bottom), (left, right))``
(an int ``p`` means ``((p, p), (p, p))``, PyTorch's ``padding=p``). Every layer
resolves it to explicit pairs at ``init`` and the arithmetic goes through
``_conv2d``, ``_max_pool`` and ``_avg_pool`` below, which take explicit pairs only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fnlearn.nn import cpu_conv, cpu_pool, precision
from fnlearn.nn.activations import activation_fn
from fnlearn.nn.core import Layer, Shape, constructor
from fnlearn.nn.dense import glorot_uniform, torch_linear_uniform
from fnlearn.nn.window import accumulator

Pair = tuple[int, int]
Padding = tuple[Pair, Pair]
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv2d(x: jax.Array, kernel: jax.Array, strides: Pair, padding: Padding,
            dilation: Pair, groups: int = 1, bias: jax.Array | None = None,
            activation: str | None = None) -> jax.Array:
    """``activation(conv(x, kernel) + bias)`` of NHWC ``x``, an HWIO ``kernel``, explicit pairs.

    Matrix products on CPU (``cpu_conv``, which applies the bias and a ReLU to each
    chunk of output while it is in cache), ``lax.conv_general_dilated`` elsewhere.
    """
    return cpu_conv.conv2d(x, kernel, strides=strides, padding=padding, dilation=dilation,
                           groups=groups, bias=bias, activation=activation)


def _max_pool(x: jax.Array, window: Pair, strides: Pair, padding: Padding) -> jax.Array:
    """Maximum over NHWC windows; padding never wins (it is -inf). Slices on CPU (``cpu_pool``)."""
    return cpu_pool.max_pool2d(x, window, strides, padding)


def _avg_pool(x: jax.Array, window: Pair, strides: Pair, padding: Padding) -> jax.Array:
    """Mean over NHWC windows of the real pixels only (PyTorch: ``count_include_pad=False``)."""
    if not any(any(p) for p in padding):
        # Every window is whole: the full-window mean, slices on CPU.
        return cpu_pool.avg_pool2d(x, window, strides, padding)
    pads = ((0, 0), *padding, (0, 0))
    dims, steps = (1, *window, 1), (1, *strides, 1)
    # Sums of 16-bit floats run in float32, as in cpu_pool.
    acc = accumulator(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    total = jax.lax.reduce_window(x.astype(acc), 0.0, jax.lax.add, dims, steps, pads)
    ones = jnp.ones((1, *x.shape[1:3], 1), acc)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, steps, pads)
    mean = total / count
    return mean.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else mean


def _pair(value, name: str, minimum: int = 1) -> Pair:
    """``value`` (an int or a pair of ints) as a pair, checked."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, Sequence) or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair)):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_padding(padding) -> str | Padding:
    """``"valid"``/``"same"`` (case-insensitive) or explicit pairs, checked."""
    if isinstance(padding, str):
        if padding.lower() not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid', 'same' or explicit pairs, got {padding!r}")
        return padding.lower()
    if isinstance(padding, int) and not isinstance(padding, bool):
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        return (padding, padding), (padding, padding)
    try:
        pairs = tuple(_pair(p, "padding", minimum=0) for p in padding)
    except (TypeError, ValueError):
        pairs = ()
    if len(pairs) != 2:
        raise ValueError(f"padding must be 'valid', 'same', an int or "
                         f"((top, bottom), (left, right)), got {padding!r}")
    return pairs


def explicit_padding(padding: str | Padding, size: Pair, window: Pair, strides: Pair,
                     dilation: Pair = (1, 1)) -> Padding:
    """The ``((top, bottom), (left, right))`` pairs that ``padding`` means for an input ``size``.

    Args:
      padding: ``"valid"``, ``"same"`` or explicit pairs (returned as given).
      size: input (height, width).
      window: kernel or pool window (height, width).
      strides, dilation: as the layer's.

    Returns:
      Explicit padding pairs; ``"same"`` puts the extra pixel at the bottom/right, as
      TensorFlow does.
    """
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return (0, 0), (0, 0)
    pairs = []
    for n, k, s, d in zip(size, window, strides, dilation):
        span = (k - 1) * d + 1
        total = max((math.ceil(n / s) - 1) * s + span - n, 0)
        pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


def _static_padding(padding: str | Padding, window: Pair, strides: Pair,
                    dilation: Pair) -> Padding | None:
    """Explicit pairs when they do not depend on the input size (all but strided "same")."""
    if padding == "same" and strides != (1, 1):
        return None
    return explicit_padding(padding, (1, 1), window, (1, 1), dilation)


def _output_size(size: Pair, window: Pair, strides: Pair, padding: Padding,
                 dilation: Pair = (1, 1)) -> Pair:
    out = []
    for n, k, s, d, (lo, hi) in zip(size, window, strides, dilation, padding):
        span = (k - 1) * d + 1
        out.append((n + lo + hi - span) // s + 1)
    return tuple(out)


def _check_image(layer: str, input_shape: Shape) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"{layer} needs per-example inputs (height, width, channels), got "
                         f"shape {tuple(input_shape)}; add nn.Reshape((28, 28, 1)) for "
                         "(28, 28) images")


def _spatial(layer: str, input_shape: Shape, window: Pair, strides: Pair, padding,
             dilation: Pair = (1, 1)) -> tuple[Padding, Pair]:
    """Explicit padding and the output (height, width), checked to be at least 1x1."""
    _check_image(layer, input_shape)
    pads = explicit_padding(padding, input_shape[:2], window, strides, dilation)
    out = _output_size(input_shape[:2], window, strides, pads, dilation)
    if min(out) < 1:
        raise ValueError(f"{layer} window {window} (dilation {dilation}) does not fit the "
                         f"input {tuple(input_shape[:2])} with padding {pads}")
    return pads, out


@constructor
def Conv2D(filters: int, kernel_size: int | Pair, strides: int | Pair = 1,
           padding: str | int | Padding = "valid", *, dilation: int | Pair = 1,
           groups: int = 1, use_bias: bool = True, activation: str | None = None,
           init: str = "keras", dtype=None, param_dtype="float32") -> Layer:
    """A 2-D convolution (Keras ``layers.Conv2D``, PyTorch ``nn.Conv2d``) on NHWC inputs.

    Args:
      filters: output channels.
      kernel_size: window (height, width), or one int for both.
      strides: step (height, width), or one int.
      padding: ``"valid"``, ``"same"``, an int, or ``((top, bottom), (left, right))``.
      dilation: spacing of the kernel taps (Keras ``dilation_rate``).
      groups: channel groups (Keras and PyTorch ``groups``): each group of
        ``in / groups`` input channels feeds only its ``filters / groups`` outputs;
        ``groups == in == filters`` is a depthwise convolution. ``filters`` and the
        input channels must be multiples of it.
      use_bias: add a bias per filter.
      activation: one of ``fnlearn.nn.ACTIVATIONS`` (None means linear).
      init: ``"keras"`` (glorot-uniform kernel with fan_in = kh*kw*in and fan_out =
        kh*kw*out, zero bias) or ``"torch"`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
        kernel and bias, fan_in = in*kh*kw: PyTorch's kaiming_uniform(a=sqrt(5))).
      dtype: the dtype it computes in (``fnlearn.nn.precision``): None, the kernel's;
        ``"bfloat16"`` convolves bfloat16 inputs and kernel, sums, adds the bias and
        applies a ReLU in float32, and rounds once.
      param_dtype: the parameters' dtype.

    The kernel is stored HWIO ``(kh, kw, in / groups, filters)``, as Keras stores it;
    PyTorch's weight is its transpose ``(3, 2, 0, 1)``.

    Raises:
      ValueError: an argument out of range, naming it; at ``init``, input channels
        that are not a multiple of ``groups``.
    """
    if isinstance(filters, bool) or not isinstance(filters, int) or filters <= 0:
        raise ValueError(f"Conv2D filters must be a positive int, got {filters!r}")
    if init not in ("keras", "torch"):
        raise ValueError(f"Conv2D init must be 'keras' or 'torch', got {init!r}")
    window = _pair(kernel_size, "Conv2D kernel_size")
    stride = _pair(strides, "Conv2D strides")
    dilate = _pair(dilation, "Conv2D dilation")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"Conv2D groups must be a positive int, got {groups!r}")
    if filters % groups:
        raise ValueError(f"Conv2D filters {filters} must be a multiple of groups {groups}")
    pad = _check_padding(padding)
    act = activation_fn(activation)
    compute = precision.check_dtype(dtype, "Conv2D dtype")
    stored = precision.check_dtype(param_dtype, "Conv2D param_dtype")
    config = {"filters": filters, "kernel_size": window, "strides": stride, "padding": padding,
              "explicit_padding": _static_padding(pad, window, stride, dilate),
              "dilation": dilate, "groups": groups, "use_bias": use_bias, "init": init,
              "activation": activation or "linear"}

    def init_fn(key, input_shape):
        _, (h, w) = _spatial("Conv2D", input_shape, window, stride, pad, dilate)
        if input_shape[-1] % groups:
            raise ValueError(f"Conv2D input channels {input_shape[-1]} (input shape "
                             f"{tuple(input_shape)}) must be a multiple of groups {groups}")
        channels = input_shape[-1] // groups
        shape = (*window, channels, filters)
        fan_in = channels * window[0] * window[1]
        kernel_key, bias_key = jax.random.split(key)
        if init == "keras":
            params = {"kernel": glorot_uniform(kernel_key, shape, fan_in,
                                               filters * window[0] * window[1])}
            bias = jnp.zeros((filters,), jnp.float32)
        else:
            params = {"kernel": torch_linear_uniform(kernel_key, shape, fan_in)}
            bias = torch_linear_uniform(bias_key, (filters,), fan_in)
        if use_bias:
            params["bias"] = bias
        return (h, w, filters), jax.tree.map(lambda p: p.astype(stored), params)

    # ReLU (and no activation) go into the convolution's own loops; others follow it.
    fused = activation if activation in ("relu", "linear") else None

    def apply_fn(params, x, *, key=None, train=False):
        pads = explicit_padding(pad, x.shape[1:3], window, stride, dilate)
        dtype = compute or params["kernel"].dtype
        y = _conv2d(x.astype(dtype), params["kernel"].astype(dtype), stride, pads, dilate,
                    groups, params["bias"] if use_bias else None, fused)
        return y if activation in (None, "linear", "relu") else act(y)

    return Layer(init_fn, apply_fn, "conv2d", config)


def _pool(kind: str, reduce, pool_size, strides, padding) -> Layer:
    window = _pair(pool_size, f"{kind} pool_size")
    stride = window if strides is None else _pair(strides, f"{kind} strides")
    pad = _check_padding(padding)
    config = {"pool_size": window, "strides": stride, "padding": padding,
              "explicit_padding": _static_padding(pad, window, stride, (1, 1))}

    def init_fn(key, input_shape):
        _, (h, w) = _spatial(kind, input_shape, window, stride, pad)
        return (h, w, input_shape[-1]), {}

    def apply_fn(params, x, *, key=None, train=False):
        pads = explicit_padding(pad, x.shape[1:3], window, stride)
        return reduce(x, window, stride, pads)

    return Layer(init_fn, apply_fn, kind, config)


@constructor
def MaxPool2D(pool_size: int | Pair = 2, strides: int | Pair | None = None,
              padding: str | int | Padding = "valid") -> Layer:
    """Maximum over windows (Keras ``MaxPooling2D``, PyTorch ``max_pool2d``).

    ``strides`` defaults to ``pool_size``; with "valid" padding a trailing row or
    column that does not fill a window is dropped, as in both frameworks.
    """
    return _pool("max_pool2d", _max_pool, pool_size, strides, padding)


@constructor
def AvgPool2D(pool_size: int | Pair = 2, strides: int | Pair | None = None,
              padding: str | int | Padding = "valid") -> Layer:
    """Mean over windows (Keras ``AveragePooling2D``); padded pixels are not counted."""
    return _pool("avg_pool2d", _avg_pool, pool_size, strides, padding)


@constructor
def GlobalAveragePooling2D() -> Layer:
    """Mean over height and width: ``(h, w, c) -> (c,)``."""

    def init_fn(key, input_shape):
        _check_image("GlobalAveragePooling2D", input_shape)
        return (input_shape[-1],), {}

    def apply_fn(params, x, *, key=None, train=False):
        return jnp.mean(x, axis=(1, 2))

    return Layer(init_fn, apply_fn, "global_avg_pool2d")


@constructor
def Reshape(target_shape: Sequence[int]) -> Layer:
    """Reshapes each example to ``target_shape`` (Keras ``layers.Reshape``; one -1 allowed)."""
    target = tuple(target_shape)
    if (not target or any(isinstance(d, bool) or not isinstance(d, int) for d in target)
            or any(d == 0 or d < -1 for d in target) or target.count(-1) > 1):
        raise ValueError(f"Reshape target_shape must be positive ints (at most one -1), "
                         f"got {target_shape!r}")

    def init_fn(key, input_shape):
        size = math.prod(input_shape)
        known = math.prod(d for d in target if d != -1)
        shape = tuple(size // known if d == -1 else d for d in target)
        if math.prod(shape) != size:
            raise ValueError(f"Reshape cannot turn per-example shape {tuple(input_shape)} "
                             f"({size} values) into {target}")
        return shape, {}

    def apply_fn(params, x, *, key=None, train=False):
        return x.reshape(x.shape[0], *target)

    return Layer(init_fn, apply_fn, "reshape", {"target_shape": target})

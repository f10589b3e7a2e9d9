"""More convolutions: ``Conv2DTranspose``, ``Conv1D``, ``DepthwiseConv2D``.

Layouts follow Keras, so Keras weights copy as they are: images NHWC, sequences NWC
(batch, length, channels); ``Conv1D`` kernels ``(k, in, out)``, ``Conv2DTranspose``
kernels ``(kh, kw, out, in)`` (Keras's), ``DepthwiseConv2D`` kernels
``(kh, kw, in, depth_multiplier)``. PyTorch's layouts differ by transposes
(``fnlearn.parity.registry`` does them). ``Conv1D`` and ``DepthwiseConv2D`` go through
``lax.conv_general_dilated``, ``Conv2DTranspose`` through the input gradient of
``cpu_conv.conv2d`` (matrix products on CPU); ``DepthwiseConv2D`` is a grouped
convolution with one group per input channel (``feature_group_count``), PyTorch's
``Conv2d(c, c * m, k, groups=c)``.

``padding`` is ``"valid"``, ``"same"`` (TensorFlow's: ``ceil(n / stride)`` outputs, the
odd pixel at the end), ``"causal"`` (``Conv1D`` only: all padding before, Keras's) or
explicit: an int ``p`` (PyTorch's ``padding=p``), or pairs ``(before, after)`` per axis.
For ``Conv2DTranspose`` explicit padding is PyTorch's: rows cropped from the full output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fnlearn.nn import cpu_conv, precision
from fnlearn.nn.activations import activation_fn
from fnlearn.nn.core import Layer, constructor
from fnlearn.nn.dense import glorot_uniform, torch_linear_uniform


def _ints(value, n: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """``value`` (an int or ``n`` ints) as ``n`` ints, checked."""
    values = (value,) * n if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(values, Sequence) or len(values) != n
            or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values)):
        raise ValueError(f"{name} must be an int >= {minimum} or {n} of them, got {value!r}")
    return tuple(int(v) for v in values)


def _padding(padding, n: int, layer: str, allowed=("valid", "same")):
    """A padding string in ``allowed``, or explicit ``(before, after)`` pairs for ``n`` axes."""
    if isinstance(padding, str):
        if padding.lower() not in allowed:
            raise ValueError(f"{layer} padding must be one of {allowed} or explicit, got "
                             f"{padding!r}")
        return padding.lower()
    if isinstance(padding, int) and not isinstance(padding, bool):
        return ((padding, padding),) * n if padding >= 0 else _bad(layer, padding)
    try:
        pairs = tuple(_ints(p, 2, "padding", 0) for p in padding)
    except (TypeError, ValueError):
        pairs = ()
    if len(pairs) != n:
        try:  # one int per axis, PyTorch's padding=(ph, pw)
            pairs = tuple((p, p) for p in _ints(padding, n, "padding", 0))
        except (TypeError, ValueError):
            _bad(layer, padding)
    return pairs


def _bad(layer, padding):
    raise ValueError(f"{layer} padding must be 'valid', 'same', an int, one int per axis or "
                     f"(before, after) pairs, got {padding!r}")


def _same(size, kernel, stride, dilation) -> tuple[int, int]:
    span = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def _kernel(key, shape, fan_in, fan_out, init, bias_size, torch_fan_in):
    kernel_key, bias_key = jax.random.split(key)
    if init == "keras":
        return (glorot_uniform(kernel_key, shape, fan_in, fan_out),
                jnp.zeros((bias_size,), jnp.float32))
    return (torch_linear_uniform(kernel_key, shape, torch_fan_in),
            torch_linear_uniform(bias_key, (bias_size,), torch_fan_in))


def _dtypes(dtype, param_dtype):
    return (precision.check_dtype(dtype, "dtype"),
            precision.check_dtype(param_dtype, "param_dtype"))


def _params(kernel, bias, use_bias: bool, dtype) -> dict:
    params = {"kernel": kernel, "bias": bias} if use_bias else {"kernel": kernel}
    return jax.tree.map(lambda p: p.astype(dtype), params)


def _check_init(init, layer):
    if init not in ("keras", "torch"):
        raise ValueError(f"{layer} init must be 'keras' or 'torch', got {init!r}")


def _check_rank(layer: str, input_shape, rank: int, what: str) -> None:
    if len(input_shape) != rank:
        raise ValueError(f"{layer} needs per-example inputs {what}, got shape "
                         f"{tuple(input_shape)}")


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@constructor
def Conv1D(filters: int, kernel_size: int, strides: int = 1, padding="valid", *,
           dilation: int = 1, use_bias: bool = True, activation: str | None = None,
           init: str = "keras", dtype=None, param_dtype="float32") -> Layer:
    """A 1-D convolution over ``(length, channels)`` (Keras ``Conv1D``; PyTorch ``Conv1d`` on
    ``(channels, length)``).

    Args:
      filters, kernel_size, strides, dilation, use_bias, activation: as ``Conv2D``'s.
      padding: ``"valid"``, ``"same"``, ``"causal"`` (Keras: ``dilation * (k - 1)`` zeros
        before, so output ``t`` sees inputs up to ``t``), an int or ``(before, after)``.
      init: ``"keras"`` (glorot uniform, zero bias) or ``"torch"`` (U(+-1/sqrt(in * k))).
      dtype, param_dtype: as ``Conv2D``'s (``fnlearn.nn.precision``).
    """
    _positive(filters, "Conv1D filters")
    _check_init(init, "Conv1D")
    (k,), (s,), (d,) = (_ints(v, 1, f"Conv1D {n}") for v, n in
                        ((kernel_size, "kernel_size"), (strides, "strides"),
                         (dilation, "dilation")))
    pad = _padding(padding, 1, "Conv1D", ("valid", "same", "causal"))
    act = activation_fn(activation)
    compute, stored = _dtypes(dtype, param_dtype)

    def pads(length):
        if pad == "valid":
            return ((0, 0),)
        if pad == "same":
            return (_same(length, k, s, d),)
        if pad == "causal":
            return ((d * (k - 1), 0),)
        return pad

    def init_fn(key, input_shape):
        _check_rank("Conv1D", input_shape, 2, "(length, channels)")
        length, channels = input_shape
        (lo, hi), = pads(length)
        out = (length + lo + hi - d * (k - 1) - 1) // s + 1
        if out < 1:
            raise ValueError(f"Conv1D kernel {k} (dilation {d}) does not fit length {length}")
        kernel, bias = _kernel(key, (k, channels, filters), k * channels, k * filters, init,
                               filters, channels * k)
        return (out, filters), _params(kernel, bias, use_bias, stored)

    def apply_fn(params, x, *, key=None, train=False):
        dtype = compute or params["kernel"].dtype
        y = jax.lax.conv_general_dilated(x.astype(dtype), params["kernel"].astype(dtype), (s,),
                                         pads(x.shape[1]), rhs_dilation=(d,),
                                         dimension_numbers=("NWC", "WIO", "NWC"),
                                         preferred_element_type=precision.sums_dtype(dtype))
        return precision.finish(y, params.get("bias"), act, activation, dtype)

    return Layer(init_fn, apply_fn, "conv1d",
                 {"filters": filters, "kernel_size": k, "strides": s, "padding": pad,
                  "dilation": d, "use_bias": use_bias, "activation": activation or "linear",
                  "init": init})


@constructor
def Conv2DTranspose(filters: int, kernel_size, strides=1, padding="valid", *,
                    output_padding=None, dilation=1, use_bias: bool = True,
                    activation: str | None = None, init: str = "keras", dtype=None,
                    param_dtype="float32") -> Layer:
    """A transposed 2-D convolution (Keras ``Conv2DTranspose``, PyTorch ``ConvTranspose2d``).

    The gradient of a ``Conv2D`` with the same settings with respect to its input: each
    input pixel spreads the kernel over a ``strides``-spaced output.

    Args:
      filters: output channels.
      kernel_size, strides, dilation: an int or a pair.
      padding: Keras's ``"valid"`` (output ``n * s + max(k - s, 0)``) or ``"same"``
        (output ``n * s``), or PyTorch's explicit padding (an int or a pair: rows and
        columns cropped from each side of the full ``(n - 1) * s + d * (k - 1) + 1``).
      output_padding: rows/columns added at the bottom/right (PyTorch's, which must be
        smaller than the stride or the dilation; Keras's with a string padding).
      use_bias, activation: as ``Conv2D``'s.
      init: ``"keras"`` (glorot uniform, zero bias) or ``"torch"`` (U(+-1/sqrt(fan_in))
        with PyTorch's fan_in of ``filters * kh * kw``).
      dtype, param_dtype: as ``Conv2D``'s (``fnlearn.nn.precision``).

    The kernel is stored ``(kh, kw, filters, in)`` as in Keras; PyTorch's weight
    ``(in, filters, kh, kw)`` is its transpose ``(3, 2, 0, 1)``.
    """
    _positive(filters, "Conv2DTranspose filters")
    _check_init(init, "Conv2DTranspose")
    window = _ints(kernel_size, 2, "Conv2DTranspose kernel_size")
    stride = _ints(strides, 2, "Conv2DTranspose strides")
    dilate = _ints(dilation, 2, "Conv2DTranspose dilation")
    pad = _padding(padding, 2, "Conv2DTranspose")
    extra = None if output_padding is None else _ints(output_padding, 2,
                                                      "Conv2DTranspose output_padding", 0)
    if extra is not None and not isinstance(pad, str) and any(
            e >= max(s, d) for e, s, d in zip(extra, stride, dilate)):
        raise ValueError(f"Conv2DTranspose output_padding {extra} must be smaller than the "
                         f"stride {stride} or the dilation {dilate} (as PyTorch requires)")
    act = activation_fn(activation)
    compute, stored = _dtypes(dtype, param_dtype)

    def crops(size) -> list[tuple[int, int, int]]:
        """Per axis: rows cropped before and after the full output, and its final size."""
        out = []
        for i, (n, k, s, d) in enumerate(zip(size, window, stride, dilate)):
            span = d * (k - 1) + 1
            full = (n - 1) * s + span
            if isinstance(pad, str):
                op = extra[i] if extra is not None else None
                if op is None:
                    length = n * s + max(span - s, 0) if pad == "valid" else n * s
                else:
                    length = (n - 1) * s + span - 2 * (0 if pad == "valid" else span // 2) + op
                total = full - length
                before = 0 if pad == "valid" else max(total, 0) // 2
                out.append((before, total - before, length))
            else:
                (before, after), op = pad[i], (extra[i] if extra is not None else 0)
                out.append((before, after - op, full - before - after + op))
        return out

    def init_fn(key, input_shape):
        _check_rank("Conv2DTranspose", input_shape, 3, "(height, width, channels)")
        *size, channels = input_shape
        sizes = crops(size)
        if min(length for _, _, length in sizes) < 1:
            raise ValueError(f"Conv2DTranspose padding {padding!r} crops the whole output of "
                             f"an input {tuple(size)}")
        area = window[0] * window[1]
        kernel, bias = _kernel(key, (*window, filters, channels), filters * area,
                               channels * area, init, filters, filters * area)
        return (sizes[0][2], sizes[1][2], filters), _params(kernel, bias, use_bias, stored)

    def apply_fn(params, x, *, key=None, train=False):
        dtype = compute or params["kernel"].dtype
        kernel = params["kernel"].astype(dtype)
        sizes = crops(x.shape[1:3])
        # The input gradient of the Conv2D this layer transposes, through cpu_conv.conv2d:
        # products and col2im on CPU (16-bit products summed in float32 there). XLA's own
        # (an lhs-dilated convolution) ran a DCGAN generator's step 35x slower inside
        # fit's compiled epoch. That Conv2D's padded input is the full output; rows past
        # it (output_padding) get no contribution.
        short = [max(-after, 0) for _, after, _ in sizes]
        inner = [length - cut for (_, _, length), cut in zip(sizes, short)]
        pads = tuple((before, max(after, 0)) for before, after, _ in sizes)
        _, transpose = jax.vjp(
            lambda y: cpu_conv.conv2d(y, kernel, strides=stride, padding=pads,
                                      dilation=dilate),
            jnp.zeros((x.shape[0], *inner, filters), dtype))
        (y,) = transpose(x.astype(dtype))
        if any(short):
            y = jnp.pad(y, ((0, 0), (0, short[0]), (0, short[1]), (0, 0)))
        return precision.finish(precision.widened(y), params.get("bias"), act, activation,
                                dtype)

    return Layer(init_fn, apply_fn, "conv2d_transpose",
                 {"filters": filters, "kernel_size": window, "strides": stride,
                  "padding": pad, "output_padding": extra, "dilation": dilate,
                  "use_bias": use_bias, "activation": activation or "linear", "init": init})


@constructor
def DepthwiseConv2D(kernel_size, strides=1, padding="valid", *, depth_multiplier: int = 1,
                    dilation=1, use_bias: bool = True, activation: str | None = None,
                    init: str = "keras", dtype=None, param_dtype="float32") -> Layer:
    """Each input channel convolved with its own ``depth_multiplier`` filters (Keras
    ``DepthwiseConv2D``; PyTorch ``Conv2d(c, c * m, k, groups=c)``).

    Args:
      kernel_size, strides, dilation: an int or a pair.
      padding: ``"valid"``, ``"same"``, an int or ``((top, bottom), (left, right))``.
      depth_multiplier: output channels per input channel; output channel ``c * m + j``
        is input channel ``c``'s ``j``-th filter, in both frameworks' order.
      use_bias, activation: as ``Conv2D``'s.
      init: ``"keras"`` (glorot uniform over ``(kh, kw, in, m)``, zero bias) or
        ``"torch"`` (U(+-1/sqrt(kh * kw)): one input channel per group).
      dtype, param_dtype: as ``Conv2D``'s (``fnlearn.nn.precision``).
    """
    multiplier = _positive(depth_multiplier, "DepthwiseConv2D depth_multiplier")
    _check_init(init, "DepthwiseConv2D")
    window = _ints(kernel_size, 2, "DepthwiseConv2D kernel_size")
    stride = _ints(strides, 2, "DepthwiseConv2D strides")
    dilate = _ints(dilation, 2, "DepthwiseConv2D dilation")
    pad = _padding(padding, 2, "DepthwiseConv2D")
    act = activation_fn(activation)
    compute, stored = _dtypes(dtype, param_dtype)

    def pads(size):
        if pad == "valid":
            return ((0, 0), (0, 0))
        if pad == "same":
            return tuple(_same(n, k, s, d) for n, k, s, d in zip(size, window, stride, dilate))
        return pad

    def init_fn(key, input_shape):
        _check_rank("DepthwiseConv2D", input_shape, 3, "(height, width, channels)")
        *size, channels = input_shape
        out = [(n + lo + hi - d * (k - 1) - 1) // s + 1
               for n, (lo, hi), k, s, d in zip(size, pads(size), window, stride, dilate)]
        if min(out) < 1:
            raise ValueError(f"DepthwiseConv2D window {window} does not fit {tuple(size)}")
        area = window[0] * window[1]
        kernel, bias = _kernel(key, (*window, channels, multiplier), channels * area,
                               multiplier * area, init, channels * multiplier, area)
        return (*out, channels * multiplier), _params(kernel, bias, use_bias, stored)

    def apply_fn(params, x, *, key=None, train=False):
        dtype = compute or params["kernel"].dtype
        kh, kw, channels, m = params["kernel"].shape
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), params["kernel"].astype(dtype).reshape(kh, kw, 1, channels * m),
            stride, pads(x.shape[1:3]), rhs_dilation=dilate,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
            preferred_element_type=precision.sums_dtype(dtype))
        return precision.finish(y, params.get("bias"), act, activation, dtype)

    return Layer(init_fn, apply_fn, "depthwise_conv2d",
                 {"kernel_size": window, "strides": stride, "padding": pad,
                  "depth_multiplier": multiplier, "dilation": dilate, "use_bias": use_bias,
                  "activation": activation or "linear", "init": init})

"""Layers that change an image's size: ``UpSampling2D``, ``ZeroPadding2D``, ``AdaptiveAvgPool2D``.

NHWC images, as everywhere in ``fnlearn.nn``; none has parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnlearn.nn.core import Layer, constructor


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, Sequence) or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair)):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_image(layer: str, input_shape) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"{layer} needs per-example inputs (height, width, channels), got "
                         f"shape {tuple(input_shape)}")


@constructor
def UpSampling2D(size: int | tuple[int, int] = 2, interpolation: str = "nearest") -> Layer:
    """Enlarges images ``size`` times (Keras ``UpSampling2D``; PyTorch ``nn.Upsample(
    scale_factor=size, mode=...)``).

    ``"nearest"`` repeats each pixel; ``"bilinear"`` interpolates with half-pixel centres
    (Keras's, and PyTorch's ``align_corners=False``).
    """
    factor = _pair(size, "UpSampling2D size", 1)
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(f"UpSampling2D interpolation must be 'nearest' or 'bilinear', got "
                         f"{interpolation!r}")

    def init_fn(key, input_shape):
        _check_image("UpSampling2D", input_shape)
        h, w, c = input_shape
        return (h * factor[0], w * factor[1], c), {}

    def apply_fn(params, x, *, key=None, train=False):
        if interpolation == "nearest":
            return jnp.repeat(jnp.repeat(x, factor[0], axis=1), factor[1], axis=2)
        n, h, w, c = x.shape
        return jax.image.resize(x, (n, h * factor[0], w * factor[1], c), "bilinear",
                                antialias=False)

    return Layer(init_fn, apply_fn, "upsampling2d",
                 {"size": factor, "interpolation": interpolation})


@constructor
def ZeroPadding2D(padding=1, *, convention: str = "keras") -> Layer:
    """Zeros around each image (Keras ``ZeroPadding2D``, PyTorch ``nn.ZeroPad2d``).

    Args:
      padding: an int (every side); with ``convention="keras"`` a pair ``(rows, columns)``
        or ``((top, bottom), (left, right))``; with ``convention="torch"`` PyTorch's
        ``(left, right, top, bottom)``.
      convention: how a tuple ``padding`` is read.
    """
    if convention not in ("keras", "torch"):
        raise ValueError(f"ZeroPadding2D convention must be 'keras' or 'torch', got "
                         f"{convention!r}")
    if isinstance(padding, int) and not isinstance(padding, bool):
        pads = ((padding, padding), (padding, padding))
    elif convention == "torch":
        values = tuple(padding) if isinstance(padding, Sequence) else ()
        if len(values) != 4:
            raise ValueError(f"ZeroPadding2D padding with convention='torch' is an int or "
                             f"(left, right, top, bottom), got {padding!r}")
        left, right, top, bottom = values
        pads = ((top, bottom), (left, right))
    elif isinstance(padding, Sequence) and len(padding) == 2 and all(
            isinstance(p, int) for p in padding):
        pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    else:
        pads = padding
    try:
        pads = tuple(_pair(p, "ZeroPadding2D padding", 0) for p in pads)
    except (TypeError, ValueError):
        pads = ()
    if len(pads) != 2:
        raise ValueError(f"ZeroPadding2D padding must be an int, (rows, columns) or "
                         f"((top, bottom), (left, right)), got {padding!r}")

    def init_fn(key, input_shape):
        _check_image("ZeroPadding2D", input_shape)
        h, w, c = input_shape
        return (h + sum(pads[0]), w + sum(pads[1]), c), {}

    def apply_fn(params, x, *, key=None, train=False):
        return jnp.pad(x, ((0, 0), *pads, (0, 0)))

    return Layer(init_fn, apply_fn, "zero_padding2d", {"padding": pads})


def _averaging(size: int, out: int) -> np.ndarray:
    """The ``(size, out)`` matrix of PyTorch's adaptive average windows along one axis:
    window ``i`` is ``[floor(i * size / out), ceil((i + 1) * size / out))``."""
    matrix = np.zeros((size, out), np.float32)
    for i in range(out):
        start, stop = (i * size) // out, -((-(i + 1) * size) // out)
        matrix[start:stop, i] = 1.0 / (stop - start)
    return matrix


@constructor
def AdaptiveAvgPool2D(output_size: int | tuple[int, int]) -> Layer:
    """Averages windows sized to give ``output_size`` (PyTorch ``AdaptiveAvgPool2d``,
    ``F.adaptive_avg_pool2d``; Keras ``AdaptiveAveragePooling2D``).

    Window ``i`` of an axis of length ``n`` covers ``[floor(i n / out), ceil((i + 1) n /
    out))``, so windows may overlap when ``out`` does not divide ``n``, as in PyTorch.
    ``output_size=1`` keeps a ``(1, 1, channels)`` image; ``GlobalAveragePooling2D`` drops
    those axes.
    """
    out = _pair(output_size, "AdaptiveAvgPool2D output_size", 1)

    def init_fn(key, input_shape):
        _check_image("AdaptiveAvgPool2D", input_shape)
        return (*out, input_shape[-1]), {}

    def apply_fn(params, x, *, key=None, train=False):
        rows, cols = (jnp.asarray(_averaging(n, o)) for n, o in zip(x.shape[1:3], out))
        return jnp.einsum("nhwc,hi,wj->nijc", x, rows.astype(x.dtype), cols.astype(x.dtype),
                          precision=jax.lax.Precision.HIGHEST)

    return Layer(init_fn, apply_fn, "adaptive_avg_pool2d", {"output_size": out})

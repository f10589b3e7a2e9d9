"""Sliding windows over NHWC arrays: their geometry, their taps, and the transpose of taps.

A 2-D window op (a convolution, a pool) reads, for each of its window
positions, one strided slice of the padded input: a *tap*. ``geometry`` checks
the window arguments and works out the output size; ``taps`` cuts the slices;
``untaps`` is their transpose (each part added back where its slice came from),
which is how the CPU lowerings in ``cpu_conv`` and ``cpu_pool`` send gradients
back without a scatter. ``accumulator`` names the dtype their sums are carried in.

``as_bits`` and ``from_bits`` move 16-bit floats as the ``uint16`` of their bits.
XLA's CPU backend supports bfloat16 in products only: any other op on bfloat16 (a
slice, a concatenation, a transpose, a select) it rewrites into float32 with
conversions on both sides, and it then keeps the float32 copy for the product too.
Moving bits instead is exact and stays 16-bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnlearn.nn.precision import is_half

Padding = str | Sequence[tuple[int, int]]


class Geometry(NamedTuple):
    """Static shape facts of one 2-D window op (hashable, so jit-friendly)."""

    window: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


def accumulator(dtype) -> np.dtype:
    """The dtype sums of ``dtype`` values are carried in: float32 for 16-bit floats."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


def as_bits(x: jax.Array) -> jax.Array:
    """A 16-bit float array as the ``uint16`` of its bits (for data movement); others as is."""
    return lax.bitcast_convert_type(x, jnp.uint16) if is_half(x.dtype) else x


def from_bits(x: jax.Array, dtype) -> jax.Array:
    """The inverse of ``as_bits``: ``uint16`` bits back to the 16-bit float ``dtype``."""
    return lax.bitcast_convert_type(x, dtype) if is_half(dtype) else x


def positive_bits(bits: jax.Array, dtype) -> jax.Array:
    """``value > 0`` for ``as_bits`` of ``dtype`` values, from the bits: sign clear, not zero."""
    if not is_half(dtype):
        return bits > 0
    return (bits - jnp.uint16(1)) < jnp.uint16(0x7FFF)


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An ``int`` or two positive ints as a pair; raises ``ValueError`` naming ``name``."""
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f"{name} must be a positive int or two of them, got {value!r}")
    return values  # type: ignore[return-value]


def padding_pairs(
    padding: Padding,
    in_hw: tuple[int, int],
    window: tuple[int, int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit ``((top, bottom), (left, right))`` padding from pairs, ``"valid"`` or ``"same"``.

    ``"same"`` gives ``ceil(size / stride)`` outputs with the odd pixel at the end, as
    ``lax`` and Keras do.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode != "SAME":
            raise ValueError(f"padding must be 'valid', 'same' or two pairs, got {padding!r}")
        pads = []
        for size, k, s, d in zip(in_hw, window, strides, dilation):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)  # type: ignore[return-value]
    pads = tuple(tuple(p) for p in padding)
    if len(pads) != 2 or not all(
        len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p) for p in pads
    ):
        raise ValueError(
            "padding must be 'valid', 'same' or two (low, high) pairs of ints >= 0, "
            f"got {padding!r}"
        )
    return pads  # type: ignore[return-value]


def geometry(
    in_hw: tuple[int, int],
    window: int | Sequence[int],
    strides: int | Sequence[int],
    padding: Padding,
    dilation: int | Sequence[int] = 1,
) -> Geometry:
    """Checks a window op's arguments and works out its output size."""
    window, strides, dilation = (
        pair(window, "window"), pair(strides, "strides"), pair(dilation, "dilation")
    )
    pads = padding_pairs(padding, in_hw, window, strides, dilation)
    out_hw = tuple(
        (size + lo + hi - d * (k - 1) - 1) // s + 1
        for size, (lo, hi), k, s, d in zip(in_hw, pads, window, strides, dilation)
    )
    if min(out_hw) < 1:
        raise ValueError(
            f"window {window} (dilation {dilation}) does not fit the padded input "
            f"{in_hw} + {pads}"
        )
    return Geometry(window, strides, dilation, pads, in_hw, out_hw)  # type: ignore[arg-type]


def taps(xp: jax.Array, geom: Geometry) -> list[jax.Array]:
    """The strided slices of padded ``xp`` that meet each window position, row-major."""
    n, _, _, c = xp.shape
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = geom.window, geom.strides, geom.dilation, geom.out_hw
    return [
        lax.slice(
            xp,
            (0, i * dh, j * dw, 0),
            (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def pad_input(x: jax.Array, geom: Geometry, value: float = 0.0) -> jax.Array:
    """``x`` with the geometry's spatial padding filled with ``value``."""
    (top, bottom), (left, right) = geom.padding
    if top == bottom == left == right == 0:
        return x
    return lax.pad(
        x, jnp.asarray(value, x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0))
    )


def untaps(parts: Sequence[jax.Array], geom: Geometry) -> jax.Array:
    """The transpose of ``taps`` after ``pad_input``: adds each part back where its slice came from.

    Each part is spread out with holes (interior padding) and shifted by edge
    padding; negative edges crop the input padding away, so no scatter is needed.
    """
    kw, (sh, sw), (dh, dw), (ho, wo) = geom.window[1], geom.strides, geom.dilation, geom.out_hw
    (h, w), ((top, _), (left, _)) = geom.in_hw, geom.padding
    zero = jnp.zeros((), parts[0].dtype)
    total = None
    for index, part in enumerate(parts):
        i, j = divmod(index, kw)
        row, col = i * dh - top, j * dw - left
        spread = lax.pad(
            part,
            zero,
            (
                (0, 0, 0),
                (row, h - row - (ho - 1) * sh - 1, sh - 1),
                (col, w - col - (wo - 1) * sw - 1, sw - 1),
                (0, 0, 0),
            ),
        )
        total = spread if total is None else total + spread
    return total

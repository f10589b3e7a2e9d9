"""Max and average pooling from strided slices on CPU, with a cheap max-pool gradient.

XLA's CPU gradient of ``lax.reduce_window`` max is ``select_and_scatter``, about
50 times slower than the pooling itself on the MNIST convnets. Here the pool is
the maximum of the window's strided slices (``window.taps``), and its
``custom_vjp`` sends each output's gradient to one input: the first maximum in
row-major window order, as ``select_and_scatter`` with ``>=`` does for ``lax``'s
gradient. The spreading back is ``window.untaps`` (padding with holes), so the
whole backward pass is one fused elementwise loop. Like ``conv2d``, both pools
are ``lax.reduce_window`` off CPU, picked by ``lax.platform_dependent``.

Average pooling divides by the full window size, padding included (PyTorch's
default ``count_include_pad=True``; the same as ``reduce_window`` add over zero
padding). With ``"valid"`` padding there is no difference.

Precision: 16-bit float inputs keep their dtype in the output; every sum (the
average pool's, and the max-pool gradient's additions where windows overlap)
runs in float32 (``window.accumulator``) and is rounded once. The maximum needs
no widening: it is exact in any dtype. For 16-bit inputs it is taken, and the
gradient's comparisons made, in float32 anyway (exact): XLA's CPU backend would
otherwise put a float32 round trip around every comparison.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnlearn.nn.precision import is_half
from fnlearn.nn.window import (
    Geometry,
    Padding,
    accumulator,
    geometry,
    pad_input,
    taps,
    untaps,
)


def _lowest(dtype) -> np.ndarray:
    """The identity of ``max`` for ``dtype``: ``-inf`` or the smallest integer.

    A NumPy constant, so that ``lax.reduce_window`` sees a known max monoid (and
    can differentiate it) even under ``jit``.
    """
    if jnp.issubdtype(dtype, jnp.floating):
        return np.array(-np.inf, dtype)
    return np.array(jnp.iinfo(dtype).min, dtype)


def _mean_dtype(mean: jax.Array, dtype) -> jax.Array:
    """A mean back in the inputs' float dtype; integer inputs keep a float mean."""
    return mean.astype(dtype) if jnp.issubdtype(dtype, jnp.floating) else mean


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool2d_cpu(x: jax.Array, geom: Geometry) -> jax.Array:
    """The CPU lowering of ``max_pool2d``: the maximum of the window's strided slices."""
    wide = x.astype(jnp.float32) if is_half(x.dtype) else x
    y = functools.reduce(jnp.maximum, taps(pad_input(wide, geom, _lowest(wide.dtype)), geom))
    return y.astype(x.dtype)


def _max_pool2d_cpu_fwd(x, geom):
    y = max_pool2d_cpu(x, geom)
    return y, (x, y)


def _max_pool2d_cpu_bwd(geom, residuals, dy):
    x, y = residuals
    acc = accumulator(x.dtype)
    taken = jnp.zeros(y.shape, bool)
    parts = []
    inputs = taps(pad_input(x, geom, _lowest(x.dtype)), geom)
    if is_half(x.dtype):
        # In float32, the maximum taken again from the widened taps (exact): comparing with
        # the 16-bit ``y`` would put a conversion in every comparison (module docstring).
        inputs = taps(pad_input(x.astype(jnp.float32), geom, _lowest(jnp.float32)), geom)
        y = functools.reduce(jnp.maximum, inputs)
    for part in inputs:
        first = (part == y) & ~taken
        taken = taken | first
        parts.append(jnp.where(first, dy.astype(acc), jnp.zeros((), acc)))
    return (untaps(parts, geom).astype(x.dtype),)


max_pool2d_cpu.defvjp(_max_pool2d_cpu_fwd, _max_pool2d_cpu_bwd)


def avg_pool2d_cpu(x: jax.Array, geom: Geometry) -> jax.Array:
    """The CPU lowering of ``avg_pool2d``: the mean of the window's strided slices."""
    # Widened before the slicing, so that the gradient's additions run in acc too.
    total = functools.reduce(jnp.add, taps(pad_input(x.astype(accumulator(x.dtype)), geom), geom))
    return _mean_dtype(total / (geom.window[0] * geom.window[1]), x.dtype)


def _pool_geometry(x, window, strides, padding) -> Geometry:
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (4 dimensions), got shape {x.shape}")
    return geometry(x.shape[1:3], window, window if strides is None else strides, padding)


def _reduce_window_args(geom: Geometry):
    return (
        (1, *geom.window, 1),
        (1, *geom.strides, 1),
        ((0, 0), *geom.padding, (0, 0)),
    )


def max_pool2d_lax(
    x: jax.Array,
    window: int | Sequence[int] = (2, 2),
    strides: int | Sequence[int] | None = None,
    padding: Padding = ((0, 0), (0, 0)),
) -> jax.Array:
    """The reference ``max_pool2d``: ``lax.reduce_window`` with ``max`` from ``-inf``.

    Args:
        x: input ``(batch, height, width, channels)``.
        window, strides, padding: as in ``max_pool2d``.

    Returns:
        ``(batch, out_height, out_width, channels)``.
    """
    geom = _pool_geometry(x, window, strides, padding)
    return lax.reduce_window(x, _lowest(x.dtype), lax.max, *_reduce_window_args(geom))


def avg_pool2d_lax(
    x: jax.Array,
    window: int | Sequence[int] = (2, 2),
    strides: int | Sequence[int] | None = None,
    padding: Padding = ((0, 0), (0, 0)),
) -> jax.Array:
    """The reference ``avg_pool2d``: ``lax.reduce_window`` sum over the window size.

    The sum runs in ``accumulator`` of the dtype (float32 for 16-bit floats).

    Args:
        x: input ``(batch, height, width, channels)``.
        window, strides, padding: as in ``avg_pool2d``.

    Returns:
        ``(batch, out_height, out_width, channels)``.
    """
    geom = _pool_geometry(x, window, strides, padding)
    acc = accumulator(x.dtype)
    total = lax.reduce_window(x.astype(acc), np.array(0, acc), lax.add, *_reduce_window_args(geom))
    return _mean_dtype(total / (geom.window[0] * geom.window[1]), x.dtype)


def max_pool2d(
    x: jax.Array,
    window: int | Sequence[int] = (2, 2),
    strides: int | Sequence[int] | None = None,
    padding: Padding = ((0, 0), (0, 0)),
) -> jax.Array:
    """Max pooling: strided slices on CPU, ``lax.reduce_window`` elsewhere.

    The gradient goes to the first maximum of each window in row-major order, as
    ``lax``'s does; padding positions never win.

    Args:
        x: input ``(batch, height, width, channels)``.
        window: pool size, an int or ``(rows, cols)``.
        strides: step of the window; ``None`` means the window size.
        padding: ``((top, bottom), (left, right))`` of ``-inf``, or ``"valid"``/``"same"``.

    Returns:
        ``(batch, out_height, out_width, channels)``.
    """
    geom = _pool_geometry(x, window, strides, padding)
    return lax.platform_dependent(
        x,
        cpu=lambda x: max_pool2d_cpu(x, geom),
        default=lambda x: max_pool2d_lax(x, geom.window, geom.strides, geom.padding),
    )


def avg_pool2d(
    x: jax.Array,
    window: int | Sequence[int] = (2, 2),
    strides: int | Sequence[int] | None = None,
    padding: Padding = ((0, 0), (0, 0)),
) -> jax.Array:
    """Average pooling over the full window (zero padding counted): slices on CPU, lax elsewhere.

    Args:
        x: input ``(batch, height, width, channels)``.
        window: pool size, an int or ``(rows, cols)``.
        strides: step of the window; ``None`` means the window size.
        padding: ``((top, bottom), (left, right))`` of zeros, or ``"valid"``/``"same"``.

    Returns:
        ``(batch, out_height, out_width, channels)``.
    """
    geom = _pool_geometry(x, window, strides, padding)
    return lax.platform_dependent(
        x,
        cpu=lambda x: avg_pool2d_cpu(x, geom),
        default=lambda x: avg_pool2d_lax(x, geom.window, geom.strides, geom.padding),
    )

"""Convolution as matrix products on CPU, with gradients that are matrix products too.

XLA's CPU convolution is several times slower than a matrix product of the same
size, and its weight gradient slower still. ``conv2d`` lowers a 2-D convolution
(NHWC activations, HWIO kernels) on CPU to im2col: the patches are strided
slices of the padded input laid side by side, and the output is one product
``patches @ kernel`` (with at most three input channels, an image's first layer,
the forward pass is instead one fused sum of taps times kernel rows). Its
``custom_vjp`` keeps the backward pass in products:

- kernel gradient: ``patches^T @ dY``, summed over the batch;
- input gradient: ``dY @ kernel^T`` gives each patch's share, which col2im adds
  back to the input positions it came from (padding with holes, no scatter).

The batch is walked in chunks of images (``lax.map`` / ``lax.scan``) so that a
chunk's patches stay in cache instead of going through memory: this is what
makes the products fast (see docs/performance.md). On other platforms, and in
the ``default`` branch of a multi-platform ``jax.export``, ``conv2d`` is
``lax.conv_general_dilated``; ``lax.platform_dependent`` picks the branch when
the platform is known, so the compiled program holds only one of them.

The CPU path supports reverse-mode differentiation (``grad``, ``vjp``) only:
``jax.jvp`` through it raises, as for any ``custom_vjp``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Padding = str | Sequence[tuple[int, int]]

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Bytes of patches (or of output, whichever is larger) per step of the batch loop.
# Measured on a 2-core EPYC: blocks of 1-8 MB ran the MNIST convs 3-5x faster than
# one product over the whole batch, 16 MB and more as slowly; see docs/performance.md.
CHUNK_BYTES = 4 * 2**20
# Up to this many input channels, the forward pass is a fused sum of elementwise
# products: 7x faster than im2col at 1 channel, 2x at 3, within 12% at 4, slower from 6
# (docs/performance.md, attempt 8).
TAPWISE_CHANNELS = 3


class Geometry(NamedTuple):
    """Static shape facts of one 2-D window op (hashable, so jit-friendly)."""

    window: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


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


def chunk_size(batch: int, bytes_per_image: int) -> int:
    """Images per step of the batch loop, so that one step's block is at most ``CHUNK_BYTES``.

    A divisor of the batch when one is at least half the largest chunk, which
    spares the leftover images their own slice, product and concatenation.
    """
    largest = max(1, min(batch, CHUNK_BYTES // max(bytes_per_image, 1)))
    divisor = max(d for d in range(1, largest + 1) if batch % d == 0)
    return divisor if 2 * divisor >= largest else largest


def map_batch(fn: Callable[..., jax.Array], arrays: Sequence[jax.Array], chunk: int) -> jax.Array:
    """``fn`` over the batch in chunks of ``chunk`` images, outputs concatenated."""
    n = arrays[0].shape[0]
    # A symbolic batch (jax.export's "b") cannot be split into chunks: one product.
    if not isinstance(n, int) or chunk >= n:
        return fn(*arrays)
    steps, rest = divmod(n, chunk)
    stacked = [a[: steps * chunk].reshape(steps, chunk, *a.shape[1:]) for a in arrays]
    out = lax.map(lambda xs: fn(*xs), stacked)
    out = out.reshape(steps * chunk, *out.shape[2:])
    if rest:
        out = jnp.concatenate([out, fn(*(a[steps * chunk :] for a in arrays))])
    return out


def sum_batch(fn: Callable[..., jax.Array], arrays: Sequence[jax.Array], chunk: int) -> jax.Array:
    """The sum of ``fn`` over the batch in chunks of ``chunk`` images."""
    n = arrays[0].shape[0]
    # A symbolic batch (jax.export's "b") cannot be split into chunks: one product.
    if not isinstance(n, int) or chunk >= n:
        return fn(*arrays)
    steps, rest = divmod(n, chunk)
    stacked = [a[: steps * chunk].reshape(steps, chunk, *a.shape[1:]) for a in arrays]
    first = fn(*(s[0] for s in stacked))

    def add(total, xs):
        return total + fn(*xs), None

    total, _ = lax.scan(add, first, [s[1:] for s in stacked])
    if rest:
        total = total + fn(*(a[steps * chunk :] for a in arrays))
    return total


def _patches(x: jax.Array, geom: Geometry) -> jax.Array:
    """im2col: ``(n * ho * wo, kh * kw * c)``, columns in the kernel's HWI order."""
    cols = taps(pad_input(x, geom), geom)
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return patches.reshape(-1, patches.shape[-1])


def _chunk(x: jax.Array, kernel: jax.Array, geom: Geometry) -> int:
    (h, w), (ho, wo), (kh, kw) = geom.in_hw, geom.out_hw, geom.window
    c, o = kernel.shape[2:]
    largest = max(ho * wo * kh * kw * c, ho * wo * o, h * w * c)
    if not isinstance(x.shape[0], int):
        return 1
    return chunk_size(x.shape[0], largest * x.dtype.itemsize)


def _tapwise(x: jax.Array, kernel: jax.Array, geom: Geometry) -> jax.Array:
    """The convolution as a sum of ``taps * kernel row`` products, one fused elementwise pass.

    For very few input channels (an image's first layer) the patch matrix is
    narrow and building it costs more than the product; this reads each tap once.
    """
    kh, kw, c, o = kernel.shape
    rows = kernel.reshape(kh * kw, c, o)
    total = None
    for t, tap in enumerate(taps(pad_input(x, geom), geom)):
        for ci in range(c):
            term = tap[..., ci : ci + 1] * rows[t, ci]
            total = term if total is None else total + term
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_cpu(x: jax.Array, kernel: jax.Array, geom: Geometry) -> jax.Array:
    """The CPU lowering of ``conv2d``: chunked im2col and one product per chunk.

    With at most ``TAPWISE_CHANNELS`` input channels, the forward pass is a sum of
    elementwise products instead (``_tapwise``).
    """
    o = kernel.shape[3]
    if kernel.shape[2] <= TAPWISE_CHANNELS:
        return _tapwise(x, kernel, geom)
    matrix = kernel.reshape(-1, o)

    def forward(xs):
        return (_patches(xs, geom) @ matrix).reshape(xs.shape[0], *geom.out_hw, o)

    return map_batch(forward, [x], _chunk(x, kernel, geom))


def _conv2d_cpu_fwd(x, kernel, geom):
    return conv2d_cpu(x, kernel, geom), (x, kernel)


def _conv2d_cpu_bwd(geom, residuals, dy):
    x, kernel = residuals
    kh, kw, c, o = kernel.shape
    matrix = kernel.reshape(-1, o)
    chunk = _chunk(x, kernel, geom)

    def input_grad(dys):
        shares = (dys.reshape(-1, o) @ matrix.T).reshape(dys.shape[0], *geom.out_hw, kh * kw, c)
        return untaps([shares[..., t, :] for t in range(kh * kw)], geom)

    def kernel_grad(xs, dys):
        return _patches(xs, geom).T @ dys.reshape(-1, o)

    dx = map_batch(input_grad, [dy], chunk).astype(x.dtype)
    dk = sum_batch(kernel_grad, [x, dy], chunk).reshape(kernel.shape).astype(kernel.dtype)
    return dx, dk


conv2d_cpu.defvjp(_conv2d_cpu_fwd, _conv2d_cpu_bwd)


def _conv_geometry(x, kernel, strides, padding, dilation) -> Geometry:
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (4 dimensions), got shape {x.shape}")
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be HWIO (4 dimensions), got shape {kernel.shape}")
    if x.shape[3] != kernel.shape[2]:
        raise ValueError(
            f"kernel input channels {kernel.shape[2]} (shape {kernel.shape}) do not match "
            f"x channels {x.shape[3]} (shape {x.shape})"
        )
    return geometry(x.shape[1:3], kernel.shape[:2], strides, padding, dilation)


def conv2d_lax(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: int | Sequence[int] = (1, 1),
    padding: Padding = ((0, 0), (0, 0)),
    dilation: int | Sequence[int] = (1, 1),
) -> jax.Array:
    """The reference ``conv2d``: ``lax.conv_general_dilated`` on NHWC and HWIO.

    Args:
        x: input ``(batch, height, width, channels)``.
        kernel: ``(height, width, in_channels, out_channels)``.
        strides, padding, dilation: as in ``conv2d``.

    Returns:
        ``(batch, out_height, out_width, out_channels)``.
    """
    geom = _conv_geometry(x, kernel, strides, padding, dilation)
    return lax.conv_general_dilated(
        x, kernel, geom.strides, geom.padding,
        rhs_dilation=geom.dilation, dimension_numbers=DIMENSION_NUMBERS,
    )


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: int | Sequence[int] = (1, 1),
    padding: Padding = ((0, 0), (0, 0)),
    dilation: int | Sequence[int] = (1, 1),
) -> jax.Array:
    """2-D cross-correlation (a deep-learning convolution): im2col products on CPU, lax elsewhere.

    The same op as ``lax.conv_general_dilated(x, kernel, strides, padding,
    rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))``.

    Args:
        x: input ``(batch, height, width, channels)``.
        kernel: ``(height, width, in_channels, out_channels)``.
        strides: step of the window, an int or ``(rows, cols)``.
        padding: ``((top, bottom), (left, right))`` zeros, or ``"valid"``/``"same"``.
        dilation: spacing of the kernel taps (atrous convolution).

    Returns:
        ``(batch, out_height, out_width, out_channels)``.
    """
    geom = _conv_geometry(x, kernel, strides, padding, dilation)
    return lax.platform_dependent(
        x,
        kernel,
        cpu=lambda x, kernel: conv2d_cpu(x, kernel, geom),
        default=lambda x, kernel: conv2d_lax(
            x, kernel, strides=geom.strides, padding=geom.padding, dilation=geom.dilation
        ),
    )

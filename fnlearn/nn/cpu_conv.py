"""Convolution as matrix products on CPU, with gradients that are matrix products too.

XLA's CPU convolution is several times slower than a matrix product of the same
size, and its weight gradient slower still. ``conv2d`` lowers a 2-D convolution
(NHWC activations, HWIO kernels) on CPU to im2col: the patches are strided
slices of the padded input laid side by side, and the output is one product
``patches @ kernel`` (with at most three input channels, an image's first layer,
the forward pass is instead one fused sum of taps times kernel rows). Its
``custom_vjp`` keeps the backward pass in products:

- kernel gradient: ``dY^T @ patches``, summed over the batch;
- input gradient: ``dY @ kernel^T`` gives each patch's share, which col2im adds
  back to the input positions it came from (padding with holes, no scatter).

A bias and a ReLU (``conv2d(..., bias=b, activation="relu")``) are applied to each
chunk of output while it is in cache, and their gradients taken inside the
backward pass's loops, instead of in passes of their own over the whole output.

The batch is walked in chunks of images (``lax.map`` / ``lax.scan``) so that a
chunk's patches stay in cache instead of going through memory: this is what
makes the products fast (see docs/performance.md). On other platforms, and in
the ``default`` branch of a multi-platform ``jax.export``, ``conv2d`` is
``lax.conv_general_dilated``; ``lax.platform_dependent`` picks the branch when
the platform is known, so the compiled program holds only one of them.

Precision: 16-bit float inputs (bfloat16, float16) are multiplied as they are
and summed in float32, in every path and in both gradients (the products take
``preferred_element_type=float32``; the tapwise sum and col2im's additions run in
float32), and the result is rounded once to the output dtype. The output dtype is
the inputs' unless ``preferred_element_type`` asks for another, as in ``lax``:
``conv2d(x_bf16, k_bf16, preferred_element_type=jnp.float32)`` gives a float32
output from bfloat16 products. The backward pass rounds the incoming gradient to
the inputs' dtype, so that its products are of that dtype too, and returns each
gradient in its input's dtype.

``groups`` splits the channels into groups that see only their own inputs
(``lax``'s ``feature_group_count``; Keras and PyTorch ``groups``): the kernel is
``(kh, kw, in / groups, out)``. On CPU each group is its own im2col product, or,
with at most ``TAPWISE_CHANNELS`` inputs per group (depthwise convolutions among
them), one tapwise sum over all groups at once.

The CPU path supports reverse-mode differentiation (``grad``, ``vjp``) only:
``jax.jvp`` through it raises, as for any ``custom_vjp``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnlearn.nn.precision import is_half
from fnlearn.nn.window import (
    Geometry,
    Padding,
    accumulator,
    as_bits,
    from_bits,
    geometry,
    pad_input,
    positive_bits,
    taps,
    untaps,
)

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Bytes of patches (or of output, whichever is larger) per step of the batch loop.
# Measured on a 2-core EPYC: blocks of 1-8 MB ran the MNIST convs 3-5x faster than
# one product over the whole batch, 16 MB and more as slowly; see docs/performance.md.
CHUNK_BYTES = 4 * 2**20
# Up to this many input channels, the forward pass is a fused sum of elementwise
# products: 7x faster than im2col at 1 channel, 2x at 3, within 12% at 4, slower from 6
# (docs/performance.md, attempt 8).
TAPWISE_CHANNELS = 3


def chunk_size(batch: int, bytes_per_image: int) -> int:
    """Images per step of the batch loop, so that one step's block is at most ``CHUNK_BYTES``.

    A divisor of the batch when one is at least half the largest chunk, which
    spares the leftover images their own slice, product and concatenation.
    """
    largest = max(1, min(batch, CHUNK_BYTES // max(bytes_per_image, 1)))
    divisor = max(d for d in range(1, largest + 1) if batch % d == 0)
    return divisor if 2 * divisor >= largest else largest


def map_batch(fn: Callable[..., jax.Array], arrays: Sequence[jax.Array], chunk: int) -> jax.Array:
    """``fn`` over the batch in chunks of ``chunk`` images, outputs concatenated.

    A 16-bit float output leaves the loop as its bits (``window.as_bits``): written in
    place, where XLA's CPU backend would rewrite the loop's whole output buffer in
    float32 every step.
    """
    n = arrays[0].shape[0]
    # A symbolic batch (jax.export's "b") cannot be split into chunks: one product.
    if not isinstance(n, int) or chunk >= n:
        return fn(*arrays)
    steps, rest = divmod(n, chunk)
    stacked = [a[: steps * chunk].reshape(steps, chunk, *a.shape[1:]) for a in arrays]
    dtype = jax.eval_shape(fn, *(s[0] for s in stacked)).dtype
    out = from_bits(lax.map(lambda xs: as_bits(fn(*xs)), stacked), dtype)
    out = out.reshape(steps * chunk, *out.shape[2:])
    if rest:
        out = jnp.concatenate([out, fn(*(a[steps * chunk :] for a in arrays))])
    return out


def sum_batch(fn: Callable[..., Any], arrays: Sequence[jax.Array], chunk: int) -> Any:
    """The sum of ``fn`` (an array or a pytree of arrays) over the batch in chunks of images.

    The scan starts from zeros rather than from the first chunk's value: the loop
    body is then compiled once, not twice (half the op's compile time).
    """
    n = arrays[0].shape[0]
    # A symbolic batch (jax.export's "b") cannot be split into chunks: one product.
    if not isinstance(n, int) or chunk >= n:
        return fn(*arrays)
    steps, rest = divmod(n, chunk)
    stacked = [a[: steps * chunk].reshape(steps, chunk, *a.shape[1:]) for a in arrays]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(fn, *(s[0] for s in stacked)))

    def add(total, xs):
        return jax.tree.map(jnp.add, total, fn(*xs)), None

    total, _ = lax.scan(add, zeros, stacked)
    if rest:
        total = jax.tree.map(jnp.add, total, fn(*(a[steps * chunk :] for a in arrays)))
    return total


def _patches(bits: jax.Array, geom: Geometry, dtype) -> jax.Array:
    """im2col of ``as_bits`` of inputs: ``(n * ho * wo, kh * kw * c)`` of ``dtype``,
    columns in the kernel's HWI order (built from the bits, see ``window.as_bits``)."""
    cols = taps(pad_input(bits, geom), geom)
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return from_bits(patches.reshape(-1, patches.shape[-1]), dtype)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` for 2-D operands, summed in ``accumulator(a.dtype)``."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                           preferred_element_type=accumulator(a.dtype))


def _transposed(a: jax.Array) -> jax.Array:
    """``a.T`` of a 2-D ``a``, laid out in memory for a product.

    The transpose sits behind ``lax.optimization_barrier`` so that XLA does not fold it
    back into the product (whose transposed-operand form is slower, and for 16-bit
    operands runs in float32). A 16-bit ``a`` is transposed as its bits
    (``window.as_bits``).
    """
    return from_bits(lax.optimization_barrier(as_bits(a).T), a.dtype)


def _chunk(x: jax.Array, kernel: jax.Array, geom: Geometry) -> int:
    (h, w), (ho, wo), (kh, kw) = geom.in_hw, geom.out_hw, geom.window
    c, o = kernel.shape[2:]
    largest = max(ho * wo * kh * kw * c, ho * wo * o, h * w * c)
    if not isinstance(x.shape[0], int):
        return 1
    return chunk_size(x.shape[0], largest * x.dtype.itemsize)


def _tapwise(x: jax.Array, kernel: jax.Array, geom: Geometry, groups: int = 1) -> jax.Array:
    """The convolution as a sum of ``taps * kernel row`` products, one fused elementwise pass.

    For very few input channels per group (an image's first layer, a depthwise
    convolution) the patch matrix is narrow and building it costs more than the
    product; this reads each tap once. The sum is in ``accumulator(x.dtype)``.
    """
    kh, kw, per_group, o = kernel.shape
    acc = accumulator(x.dtype)
    rows = kernel.astype(acc).reshape(kh * kw, per_group, groups, o // groups)
    total = None
    # Widened before the slicing, so that JAX's transpose (grouped case) adds in acc too;
    # a 16-bit input is widened once, behind a barrier: fused into the taps, the
    # conversion would be redone for every tap and output channel.
    wide = x.astype(acc) if acc == x.dtype else lax.optimization_barrier(x.astype(acc))
    for t, tap in enumerate(taps(pad_input(wide, geom), geom)):
        tap = tap.reshape(*tap.shape[:3], groups, per_group)
        for ci in range(per_group):
            term = tap[..., ci : ci + 1] * rows[t, ci]
            total = term if total is None else total + term
    return total.reshape(*total.shape[:3], o)


def _epilogue(y: jax.Array, bias: jax.Array | None, activation: str | None) -> jax.Array:
    """``activation(y + bias)`` on a block of outputs, still in its summing dtype."""
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return jax.nn.relu(y) if activation == "relu" else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def conv2d_cpu(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, geom: Geometry,
               out_dtype: np.dtype, activation: str | None) -> jax.Array:
    """The CPU lowering of ``conv2d`` (one group): chunked im2col and one product per chunk.

    With at most ``TAPWISE_CHANNELS`` input channels, the forward pass is a sum of
    elementwise products instead (``_tapwise``). ``x`` and ``kernel`` share a dtype;
    sums are in ``accumulator`` of it, the result is ``out_dtype``. The bias and the
    activation (None or ``"relu"``) are applied to each chunk while it is in cache,
    and their gradients are taken inside the backward pass's chunk loops.
    """
    o = kernel.shape[3]
    if kernel.shape[2] <= TAPWISE_CHANNELS:
        return _epilogue(_tapwise(x, kernel, geom), bias, activation).astype(out_dtype)
    matrix = kernel.reshape(-1, o)

    def forward(bits):
        y = _matmul(_patches(bits, geom, x.dtype), matrix)
        y = _epilogue(y, bias, activation).astype(out_dtype)
        return y.reshape(bits.shape[0], *geom.out_hw, o)

    return map_batch(forward, [as_bits(x)], _chunk(x, kernel, geom))


def _conv2d_cpu_fwd(x, kernel, bias, geom, out_dtype, activation):
    y = conv2d_cpu(x, kernel, bias, geom, out_dtype, activation)
    return y, (x, kernel, bias, y if activation == "relu" else None)


def _conv2d_cpu_bwd(geom, out_dtype, activation, residuals, dy):
    x, kernel, bias, y = residuals
    kh, kw, c, o = kernel.shape
    matrix = kernel.reshape(-1, o)
    # A 16-bit product with a transposed operand would run in float32 (``_transposed``).
    matrix_t = _transposed(matrix) if is_half(matrix.dtype) else matrix.T
    chunk = _chunk(x, kernel, geom)
    # The products take operands of the inputs' dtype (bfloat16 stays bfloat16); the loops
    # move 16-bit values as their bits (``window.as_bits``).
    dy = dy.astype(x.dtype)
    outputs = [as_bits(dy)] if y is None else [as_bits(dy), as_bits(y)]

    def pre_activation(dys, ys=None):
        """The gradient before the activation (bits), one row per output position."""
        dz = dys if ys is None else jnp.where(positive_bits(ys, y.dtype), dys,
                                              jnp.zeros((), dys.dtype))
        return dz.reshape(-1, o)

    def input_grad(*dys_ys):
        shares = _matmul(from_bits(pre_activation(*dys_ys), x.dtype), matrix_t)
        shares = shares.reshape(dys_ys[0].shape[0], *geom.out_hw, kh * kw, c)
        return untaps([shares[..., t, :] for t in range(kh * kw)], geom).astype(x.dtype)

    # Narrow patches (few input channels): the kernel gradient's product as it comes.
    # Wide patches: dz^T laid out in memory makes a plain (o, rows) @ (rows, k) product,
    # about 20% faster here than one contracting both operands' rows
    # (docs/performance.md); the barrier keeps XLA from folding the transpose back, and
    # the sum stays (o, k) until the loop is done for the same reason.
    wide = c > TAPWISE_CHANNELS

    def kernel_and_bias_grad(xs, *dys_ys):
        dz_bits = pre_activation(*dys_ys)
        dz = from_bits(dz_bits, x.dtype)
        db = None if bias is None else jnp.sum(dz, 0, dtype=accumulator(dz.dtype))
        if wide:
            return _matmul(_transposed(dz), _patches(xs, geom, x.dtype)), db
        return _matmul(_patches(xs, geom, x.dtype).T, dz), db

    dx = map_batch(input_grad, outputs, chunk)
    dk, db = sum_batch(kernel_and_bias_grad, [as_bits(x), *outputs], chunk)
    dk = (dk.T if wide else dk).reshape(kernel.shape).astype(kernel.dtype)
    return dx, dk, (None if bias is None else db.astype(bias.dtype))


conv2d_cpu.defvjp(_conv2d_cpu_fwd, _conv2d_cpu_bwd)


def conv2d_cpu_grouped(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, geom: Geometry,
                       groups: int, out_dtype: np.dtype, activation: str | None) -> jax.Array:
    """The CPU lowering of ``conv2d`` with ``groups``: one tapwise sum or one lowering a group.

    With few inputs per group, a tapwise sum over all groups at once, which JAX
    differentiates (its sums run in ``accumulator`` too); otherwise ``conv2d_cpu``
    on each group's channels, outputs side by side.
    """
    if groups == 1 and kernel.shape[2] <= TAPWISE_CHANNELS:
        # XLA fuses bias and activation into the tapwise sum's pass anyway, and JAX's own
        # gradients of them were 10% faster than inside the kernel gradient's loop here.
        y = conv2d_cpu(x, kernel, None, geom, accumulator(x.dtype), None)
        return _epilogue(y, bias, activation).astype(out_dtype)
    if groups == 1:
        return conv2d_cpu(x, kernel, bias, geom, out_dtype, activation)
    per_group, per_out = kernel.shape[2], kernel.shape[3] // groups
    if per_group <= TAPWISE_CHANNELS:
        y = _tapwise(x, kernel, geom, groups)
        return _epilogue(y, bias, activation).astype(out_dtype)
    return jnp.concatenate([
        conv2d_cpu(x[..., g * per_group : (g + 1) * per_group],
                   kernel[..., g * per_out : (g + 1) * per_out],
                   None if bias is None else bias[g * per_out : (g + 1) * per_out],
                   geom, out_dtype, activation)
        for g in range(groups)
    ], axis=-1)


def _conv_geometry(x, kernel, strides, padding, dilation, groups) -> Geometry:
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (4 dimensions), got shape {x.shape}")
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be HWIO (4 dimensions), got shape {kernel.shape}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if x.shape[3] != kernel.shape[2] * groups:
        per_group = f" x groups {groups}" if groups > 1 else ""
        raise ValueError(
            f"kernel input channels {kernel.shape[2]}{per_group} (shape {kernel.shape}) do not "
            f"match x channels {x.shape[3]} (shape {x.shape})"
        )
    if kernel.shape[3] % groups:
        raise ValueError(
            f"kernel output channels {kernel.shape[3]} (shape {kernel.shape}) are not a "
            f"multiple of groups {groups}"
        )
    return geometry(x.shape[1:3], kernel.shape[:2], strides, padding, dilation)


def _check_epilogue(bias, activation, kernel) -> str | None:
    """The activation (None or ``"relu"``), with the bias checked against the kernel."""
    if bias is not None and tuple(bias.shape) != (kernel.shape[3],):
        raise ValueError(
            f"bias must have shape ({kernel.shape[3]},) for kernel {kernel.shape}, "
            f"got {tuple(bias.shape)}"
        )
    if activation not in (None, "linear", "relu"):
        raise ValueError(f"activation must be None, 'linear' or 'relu', got {activation!r}")
    return None if activation == "linear" else activation


def _dtypes(x, kernel, preferred_element_type):
    """``x`` and ``kernel`` in their common dtype, and the output dtype."""
    dtype = jnp.result_type(x, kernel)
    if preferred_element_type is None:
        return x.astype(dtype), kernel.astype(dtype), np.dtype(dtype)
    out = np.dtype(preferred_element_type)
    if not jnp.issubdtype(out, jnp.floating) or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"preferred_element_type must be a float dtype for float inputs, got "
            f"{preferred_element_type!r} for inputs of dtype {dtype}"
        )
    return x.astype(dtype), kernel.astype(dtype), out


def conv2d_lax(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: int | Sequence[int] = (1, 1),
    padding: Padding = ((0, 0), (0, 0)),
    dilation: int | Sequence[int] = (1, 1),
    groups: int = 1,
    bias: jax.Array | None = None,
    activation: str | None = None,
    preferred_element_type=None,
) -> jax.Array:
    """The reference ``conv2d``: ``lax.conv_general_dilated`` on NHWC and HWIO.

    Sums in ``accumulator`` of the inputs' dtype (float32 for 16-bit floats), adds
    the bias and applies the activation there, then rounds to the output dtype, as
    the CPU path does.

    Args:
        x: input ``(batch, height, width, channels)``.
        kernel: ``(height, width, in_channels / groups, out_channels)``.
        strides, padding, dilation, groups, bias, activation, preferred_element_type:
            as in ``conv2d``.

    Returns:
        ``(batch, out_height, out_width, out_channels)``.
    """
    geom = _conv_geometry(x, kernel, strides, padding, dilation, groups)
    _check_epilogue(bias, activation, kernel)
    x, kernel, out_dtype = _dtypes(x, kernel, preferred_element_type)
    y = lax.conv_general_dilated(
        x, kernel, geom.strides, geom.padding,
        rhs_dilation=geom.dilation, dimension_numbers=DIMENSION_NUMBERS,
        feature_group_count=groups, preferred_element_type=accumulator(x.dtype),
    )
    return _epilogue(y, bias, activation).astype(out_dtype)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: int | Sequence[int] = (1, 1),
    padding: Padding = ((0, 0), (0, 0)),
    dilation: int | Sequence[int] = (1, 1),
    groups: int = 1,
    bias: jax.Array | None = None,
    activation: str | None = None,
    preferred_element_type=None,
) -> jax.Array:
    """2-D cross-correlation (a deep-learning convolution): im2col products on CPU, lax elsewhere.

    The same op as ``lax.conv_general_dilated(x, kernel, strides, padding,
    rhs_dilation=dilation, feature_group_count=groups, dimension_numbers=("NHWC",
    "HWIO", "NHWC"), preferred_element_type=...)``, with 16-bit float inputs summed
    in float32.

    Args:
        x: input ``(batch, height, width, channels)``.
        kernel: ``(height, width, in_channels / groups, out_channels)``.
        strides: step of the window, an int or ``(rows, cols)``.
        padding: ``((top, bottom), (left, right))`` zeros, or ``"valid"``/``"same"``.
        dilation: spacing of the kernel taps (atrous convolution).
        groups: channel groups (``feature_group_count``); both channel counts must
            be multiples of it.
        bias: ``(out_channels,)`` added to the output, or None.
        activation: ``"relu"`` applied after the bias, or None (``"linear"``). On
            CPU both happen on each chunk of the output while it is in cache, and
            their gradients inside the backward pass's loops.
        preferred_element_type: the output dtype; ``None`` means the inputs' (their
            common dtype when they differ).

    Returns:
        ``(batch, out_height, out_width, out_channels)``.

    Raises:
        ValueError: shapes, window arguments, groups, bias, activation or
            ``preferred_element_type`` that do not fit, naming the argument.
    """
    geom = _conv_geometry(x, kernel, strides, padding, dilation, groups)
    activation = _check_epilogue(bias, activation, kernel)
    x, kernel, out_dtype = _dtypes(x, kernel, preferred_element_type)
    return lax.platform_dependent(
        x,
        kernel,
        bias,
        cpu=lambda x, kernel, bias: conv2d_cpu_grouped(
            x, kernel, bias, geom, groups, out_dtype, activation
        ),
        default=lambda x, kernel, bias: conv2d_lax(
            x, kernel, strides=geom.strides, padding=geom.padding, dilation=geom.dilation,
            groups=groups, bias=bias, activation=activation, preferred_element_type=out_dtype,
        ),
    )

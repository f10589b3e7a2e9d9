"""The dtypes a layer computes in: its ``dtype``/``param_dtype`` arguments, and 16-bit products.

Layers with parameters take Flax's two arguments:

* ``param_dtype`` (default float32): the dtype the parameters are created in;
* ``dtype`` (default None): the dtype the layer computes in. None computes in what
  the inputs and parameters promote to (float32 for float32 parameters), as before
  any policy; a 16-bit float (``"bfloat16"``, ``"float16"``) rounds the inputs and a
  copy of the parameters to it, sums products in float32, and rounds the result once.

``nn.with_policy`` (``fnlearn.nn.policy``) sets ``dtype`` on every layer that left it
None; an explicit ``dtype`` stays, so ``Dense(10, dtype="float32")`` keeps a layer in
float32 under ``mixed_bfloat16``.

What stays float32 whatever the layer's ``dtype``: sums of products (``product`` and
``einsum`` here, ``cpu_conv`` for convolutions), bias and activation before the one
rounding, ``softmax`` and ``log_softmax`` (``FLOAT32_ACTIVATIONS``: they return float32),
normalization statistics, the sequence layers' recurrent state, gates and attention
softmax, and anything ``float32_outputs`` widens for a loss.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HALF = (np.dtype(jnp.bfloat16), np.dtype(np.float16))
# Activations computed and returned in float32 from a 16-bit layer: their outputs are
# probabilities and log-probabilities that a loss reads (torch.autocast runs the losses
# after them in float32; Keras asks for a float32 last layer).
FLOAT32_ACTIVATIONS = frozenset({"softmax", "log_softmax"})


def check_dtype(value, argument: str) -> np.dtype | None:
    """``value`` (None, a dtype or its name) as a float ``np.dtype``, or a clear error."""
    if value is None:
        return None
    try:
        dtype = np.dtype(jnp.dtype(value))
    except TypeError as error:
        raise ValueError(f"{argument} must be a float dtype or its name ('float32', "
                         f"'bfloat16', 'float16'), got {value!r}") from error
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{argument} must be a float dtype ('float32', 'bfloat16', "
                         f"'float16'), got {dtype}")
    return dtype


def is_half(dtype) -> bool:
    """Whether ``dtype`` is a 16-bit float (bfloat16 or float16)."""
    return np.dtype(dtype) in HALF


def compute_dtype(dtype: np.dtype | None, *arrays) -> np.dtype:
    """A layer's computing dtype: its ``dtype``, or what ``arrays`` promote to (None)."""
    return np.dtype(jnp.result_type(*arrays)) if dtype is None else dtype


def widened(x: jax.Array) -> jax.Array:
    """``x`` in float32 if it is a 16-bit float, else as it is."""
    return x.astype(jnp.float32) if is_half(x.dtype) else x


def float32_outputs(tree):
    """Every 16-bit float leaf of ``tree`` in float32 (what losses and predictions read)."""
    return jax.tree.map(widened, tree)


def rounded(y: jax.Array, dtype: np.dtype, activation: str | None) -> jax.Array:
    """A float32 result in the layer's ``dtype``, except float32 activations' outputs."""
    return y if activation in FLOAT32_ACTIVATIONS else y.astype(dtype)


def _dot(a: jax.Array, b: jax.Array, contract_a: int, contract_b: int) -> jax.Array:
    """``a`` and ``b`` contracted on one axis each, summed and returned in float32."""
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                           preferred_element_type=jnp.float32)


def product(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """``x @ kernel`` on the last axis of ``x``, operands rounded to ``dtype``, in float32.

    The products take ``dtype`` operands (bfloat16 products run about 2.5x faster than
    float32 ones on a CPU with AVX-512 BF16) and are summed in float32, forward and
    backward. Its gradient rounds the incoming gradient to ``dtype`` for the two
    backward products (as a 16-bit framework's backward pass gets it), gives ``x`` its
    gradient in ``dtype`` and the kernel its gradient in the kernel's own dtype,
    straight from the float32 sums (float32 master weights lose nothing to a rounding).

    Args:
      x: inputs ``(..., in)``, of any float dtype.
      kernel: ``(in, out)``, usually float32.
      dtype: the operands' dtype (bfloat16 or float16).

    Returns:
      ``(..., out)`` in float32.
    """
    dtype = np.dtype(dtype)
    return _product(x.astype(dtype), kernel, dtype, np.dtype(kernel.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _product(x, kernel, dtype, kernel_dtype):
    return _dot(x, kernel.astype(dtype), x.ndim - 1, 0)


def _product_fwd(x, kernel, dtype, kernel_dtype):
    low = kernel.astype(dtype)
    return _dot(x, low, x.ndim - 1, 0), (x, low)


def _product_bwd(dtype, kernel_dtype, residuals, g):
    x, low = residuals
    g = g.astype(dtype)
    dx = _dot(g, low, g.ndim - 1, 1).astype(x.dtype)
    rows_x = x.reshape(-1, x.shape[-1])
    rows_g = g.reshape(-1, g.shape[-1])
    dk = _dot(rows_x, rows_g, 0, 0).astype(kernel_dtype)
    return dx, dk


_product.defvjp(_product_fwd, _product_bwd)


def einsum(subscripts: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """``jnp.einsum(subscripts, a, b)`` of operands rounded to ``dtype``, summed in float32.

    The sequence layers' products (the recurrent product of each time step, attention's
    projections, scores and weighted values), as ``product`` is Dense's: ``dtype``
    operands and float32 sums, forward and backward. The gradient rounds the incoming
    gradient to ``dtype`` for the two backward products and gives each operand its
    gradient in the operand's own dtype, straight from the float32 sums: a float32
    recurrent state's gradient is not rounded at each step it flows back through, and a
    float32 kernel's per-step gradients are summed over time in float32.

    Args:
      subscripts: two operands and an output, ``"bthk,bshk->bhts"``; every index of an
        operand appears in the other operand or in the output.
      a, b: the operands, of any float dtype.
      dtype: the operands' dtype (bfloat16 or float16).

    Returns:
      The einsum in float32.
    """
    inputs, output = subscripts.replace(" ", "").split("->")
    left, right = inputs.split(",")
    for mine, other in ((left, right), (right, left)):
        alone = set(mine) - set(other) - set(output)
        if alone or len(set(mine)) < len(mine):
            raise ValueError(f"einsum {subscripts!r}: each operand's indices must be distinct "
                             "and each in the other operand or the output")
    if set(output) - set(left) - set(right):
        raise ValueError(f"einsum {subscripts!r}: an output index is in neither operand")
    return _einsum(a, b, (left, right, output), np.dtype(dtype), np.dtype(a.dtype),
                   np.dtype(b.dtype))


def _arranged(x: jax.Array, axes: list[int]) -> jax.Array:
    """``x`` transposed to ``axes`` and kept so (the barrier): XLA would otherwise fold the
    transpose into the product and hand its CPU runtime a form it refuses."""
    if axes == sorted(axes):
        return x
    return lax.optimization_barrier(x.transpose(axes))


def _sums(spec: tuple[str, str, str], a: jax.Array, b: jax.Array) -> jax.Array:
    """The einsum as one batched matrix product ``(batch, rows, k) @ (batch, k, columns)``
    in float32.

    XLA's CPU backend (jax 0.10) multiplies 16-bit operands into float32 sums in this
    form; some others, which ``jnp.einsum`` or a folded transpose produce (a contracted
    axis first in the left operand, inside a scan's gradient or attention's), reach a
    runtime that refuses them: "Unsupported element type for DotThunk::Execute: BF16 x
    BF16 = F32".
    """
    left, right, output = spec
    batch = [i for i in output if i in left and i in right]
    summed = [i for i in left if i in right and i not in output]
    rows = [i for i in left if i not in right]
    columns = [i for i in right if i not in left]
    size = dict(zip(left, a.shape)) | dict(zip(right, b.shape))

    def count(indices):
        return math.prod(size[i] for i in indices)

    a = _arranged(a, [left.index(i) for i in batch + rows + summed])
    b = _arranged(b, [right.index(i) for i in batch + summed + columns])
    y = lax.dot_general(a.reshape(count(batch), count(rows), count(summed)),
                        b.reshape(count(batch), count(summed), count(columns)),
                        (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)
    order = batch + rows + columns
    y = y.reshape([size[i] for i in order])
    return y.transpose([order.index(i) for i in output])


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _einsum(a, b, spec, dtype, a_dtype, b_dtype):
    return _sums(spec, a.astype(dtype), b.astype(dtype))


def _einsum_fwd(a, b, spec, dtype, a_dtype, b_dtype):
    low_a, low_b = a.astype(dtype), b.astype(dtype)
    return _sums(spec, low_a, low_b), (low_a, low_b)


def _einsum_bwd(spec, dtype, a_dtype, b_dtype, residuals, g):
    low_a, low_b = residuals
    left, right, output = spec
    g = g.astype(dtype)
    da = _sums((output, right, left), g, low_b).astype(a_dtype)
    db = _sums((left, output, right), low_a, g).astype(b_dtype)
    return da, db


_einsum.defvjp(_einsum_fwd, _einsum_bwd)


def sums_dtype(dtype) -> np.dtype | None:
    """``preferred_element_type`` for a ``lax`` product or convolution computing in
    ``dtype``: float32 for 16-bit floats, None (the operands' own) otherwise."""
    return np.dtype(np.float32) if is_half(dtype) else None


def finish(y: jax.Array, bias: jax.Array | None, act, activation: str | None,
           dtype) -> jax.Array:
    """``act(y + bias)`` on a layer's summed products, in the layer's ``dtype``.

    ``y`` holds the sums (float32 for a 16-bit ``dtype``): the bias and the activation
    are applied to them before the one rounding (none for ``FLOAT32_ACTIVATIONS``).
    """
    if bias is not None:
        y = y + bias.astype(y.dtype)
    y = act(y)
    return rounded(y, dtype, activation) if is_half(dtype) else y

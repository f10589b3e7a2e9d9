"""bfloat16 and float16 through the CPU convolution and pooling: float32 sums, one rounding.

Every path (tapwise, im2col, im2col in chunks with a leftover, both grouped
paths, max and average pooling; forward and gradients) gets bfloat16 inputs and
is compared with two references on the same bfloat16 values:

- the float32 reference: the same op on the inputs widened to float32. A result
  summed in float32 and rounded once to bfloat16 is within bfloat16's unit
  roundoff, 2**-8 (0.39%), of each reference value, so within 2**-8 of the
  largest; a bfloat16 running sum is not (1.4% at 3 channels, measured).
- ``lax`` in bfloat16 with float32 accumulation (``preferred_element_type``):
  both round nearly the same float32 sum, so they differ by at most one bfloat16
  step, 2**-7 of the value.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fnlearn.nn import conv, cpu_conv, cpu_pool

UNIT_ROUNDOFF = {jnp.bfloat16: 2.0**-8, jnp.float16: 2.0**-11}


def max_error(actual, expected):
    """Largest absolute difference as a fraction of the largest reference value."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def random(seed, shape, dtype=jnp.bfloat16):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


def lax_conv(x, kernel, strides, padding, dilation, groups):
    """``lax.conv_general_dilated`` summing in float32, rounded to the inputs' dtype."""
    y = lax.conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilation, feature_group_count=groups,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def conv_and_grads(fn, x, kernel, cotangent):
    y, vjp = jax.vjp(fn, x, kernel)
    return (y, *vjp(cotangent.astype(y.dtype)))


# (batch, height, width, in channels, out channels, kernel, strides, padding, dilation, groups)
PATHS = {
    "tapwise": ((3, 10, 9, 3, 8, 3, (2, 1), "same", (1, 1), 1)),
    "im2col": ((2, 9, 8, 16, 8, 3, (1, 2), ((1, 2), (0, 1)), (2, 1), 1)),
    "grouped tapwise (depthwise)": ((2, 9, 8, 6, 12, 3, (1, 1), "same", (1, 2), 6)),
    "grouped im2col": ((2, 9, 8, 8, 6, 3, (2, 2), "valid", (1, 1), 2)),
}


# Every path in bfloat16; float16 (unit roundoff 2**-11) on the two ungrouped ones.
@pytest.mark.parametrize("path, dtype", [(path, jnp.bfloat16) for path in PATHS]
                         + [("tapwise", jnp.float16), ("im2col", jnp.float16)])
def test_conv_sums_16_bit_inputs_in_float32(path, dtype):
    n, h, w, c, o, k, strides, padding, dilation, groups = PATHS[path]
    x, kernel = random(0, (n, h, w, c), dtype), random(1, (k, k, c // groups, o), dtype) * 0.3
    options = dict(strides=strides, padding=padding, dilation=dilation, groups=groups)
    cotangent = random(2, cpu_conv.conv2d_lax(x, kernel, **options).shape, dtype)
    ours = jax.jit(lambda x, k, g: conv_and_grads(
        lambda x, k: cpu_conv.conv2d(x, k, **options), x, k, g))(x, kernel, cotangent)
    wide = conv_and_grads(lambda x, k: cpu_conv.conv2d_lax(x, k, **options),
                          x.astype(jnp.float32), kernel.astype(jnp.float32), cotangent)
    geom = cpu_conv.geometry((h, w), (k, k), strides, padding, dilation)
    reference = conv_and_grads(
        lambda x, k: lax_conv(x, k, geom.strides, geom.padding, geom.dilation, groups),
        x, kernel, cotangent)
    for name, got, want, lax_value in zip(("output", "dx", "dkernel"), ours, wide, reference):
        assert got.dtype == dtype, name
        assert max_error(got, want) <= UNIT_ROUNDOFF[dtype], name
        assert max_error(got, lax_value) <= 2 * UNIT_ROUNDOFF[dtype], name


def test_the_chunked_forward_sums_bfloat16_in_float32(monkeypatch):
    x, kernel = random(0, (7, 8, 8, 5)), random(1, (3, 3, 5, 4)) * 0.3
    geom = cpu_conv.geometry((8, 8), (3, 3), 1, "same", (2, 2))
    monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", 3 * 8 * 8 * 9 * 5 * 2)
    assert cpu_conv._chunk(x, kernel, geom) == 3  # 7 = 2 chunks of 3 + 1 left over
    cotangent = random(2, (7, 8, 8, 4))
    ours = jax.jit(lambda x, k, g: conv_and_grads(
        lambda x, k: cpu_conv.conv2d(x, k, padding="same", dilation=2), x, k, g))(
            x, kernel, cotangent)
    wide = conv_and_grads(lambda x, k: cpu_conv.conv2d_lax(x, k, padding="same", dilation=2),
                          x.astype(jnp.float32), kernel.astype(jnp.float32), cotangent)
    reference = conv_and_grads(
        lambda x, k: lax_conv(x, k, (1, 1), geom.padding, (2, 2), 1), x, kernel, cotangent)
    for got, want, lax_value in zip(ours, wide, reference):
        assert got.dtype == jnp.bfloat16
        assert max_error(got, want) <= 2.0**-8
        assert max_error(got, lax_value) <= 2.0**-7


@pytest.mark.parametrize("channels", [3, 16])
def test_preferred_element_type_gives_a_float32_output_from_bfloat16_products(channels):
    x, kernel = random(0, (2, 9, 9, channels)), random(1, (3, 3, channels, 8))
    fast = jax.jit(lambda x, k: cpu_conv.conv2d(
        x, k, padding="same", preferred_element_type=jnp.float32))
    y = fast(x, kernel)
    want = cpu_conv.conv2d_lax(x.astype(jnp.float32), kernel.astype(jnp.float32),
                               padding="same")
    assert y.dtype == jnp.float32
    # Products of bfloat16 values are exact in float32: only the float32 sum's rounding.
    assert max_error(y, want) < 1e-6
    # The gradients come back in the inputs' dtype, from bfloat16 products.
    dx, dkernel = jax.grad(lambda x, k: jnp.sum(fast(x, k) ** 2), argnums=(0, 1))(x, kernel)
    assert dx.dtype == dkernel.dtype == jnp.bfloat16
    wide = jax.grad(lambda x, k: jnp.sum(cpu_conv.conv2d_lax(x, k, padding="same") ** 2),
                    argnums=(0, 1))(x.astype(jnp.float32), kernel.astype(jnp.float32))
    for got, want in zip((dx, dkernel), wide):
        # The incoming float32 gradient is rounded to bfloat16 first: two roundings.
        assert max_error(got, want) <= 2 * 2.0**-8


def test_preferred_element_type_must_be_a_float_dtype():
    with pytest.raises(ValueError, match="preferred_element_type"):
        cpu_conv.conv2d(random(0, (1, 5, 5, 2)), random(1, (3, 3, 2, 2)),
                        preferred_element_type=jnp.int32)


POOLS = [((2, 8, 8, 3), (2, 2), None, "valid"), ((2, 9, 8, 4), (3, 3), (2, 2), "same")]


@pytest.mark.parametrize("shape, window, strides, padding", POOLS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pools_keep_bfloat16_and_sum_in_float32(kind, shape, window, strides, padding):
    fast = {"max": cpu_pool.max_pool2d, "avg": cpu_pool.avg_pool2d}[kind]
    reference = {"max": cpu_pool.max_pool2d_lax, "avg": cpu_pool.avg_pool2d_lax}[kind]
    x = random(0, shape)
    cotangent = random(1, reference(x, window, strides, padding).shape)

    def value_and_grad(pool, x):
        y, vjp = jax.vjp(lambda x: pool(x, window, strides, padding), x)
        return y, vjp(cotangent.astype(y.dtype))[0]

    ours = jax.jit(lambda x: value_and_grad(fast, x))(x)
    wide = value_and_grad(reference, x.astype(jnp.float32))
    lax_value = value_and_grad(reference, x)
    for got, want, lax_got in zip(ours, wide, lax_value):
        assert got.dtype == jnp.bfloat16
        assert max_error(got, want) <= 2.0**-8
        assert max_error(got, lax_got) <= 2.0**-7
    if kind == "max":  # a maximum is exact in any dtype
        np.testing.assert_array_equal(np.asarray(ours[0], np.float32), wide[0])


def test_the_layers_average_pool_with_padding_sums_bfloat16_in_float32():
    # 100 + small values: a bfloat16 running sum drops the small ones (step 0.5 at 100).
    x = (100 + random(0, (1, 6, 6, 2), jnp.float32) * 0.1).astype(jnp.bfloat16)
    y = conv._avg_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    want = conv._avg_pool(x.astype(jnp.float32), (3, 3), (2, 2), ((1, 1), (1, 1)))
    assert y.dtype == jnp.bfloat16
    assert max_error(y, want) <= 2.0**-8


@pytest.mark.parametrize("channels", [3, 16])
def test_bias_and_relu_inside_the_convolution_sum_bfloat16_in_float32(channels):
    x, kernel = random(0, (4, 9, 8, channels)), random(1, (3, 3, channels, 8)) * 0.3
    bias = random(2, (8,)) * 0.3
    cotangent = random(3, (4, 9, 8, 8))

    def with_grads(fn, *args):
        y, vjp = jax.vjp(fn, *args)
        return (y, *vjp(cotangent.astype(y.dtype)))

    ours = jax.jit(lambda *a: with_grads(lambda x, k, b: cpu_conv.conv2d(
        x, k, padding="same", bias=b, activation="relu"), *a))(x, kernel, bias)
    wide = with_grads(lambda x, k, b: jax.nn.relu(cpu_conv.conv2d_lax(x, k, padding="same") + b),
                      *(a.astype(jnp.float32) for a in (x, kernel, bias)))
    for name, got, want in zip(("output", "dx", "dkernel", "dbias"), ours, wide):
        assert got.dtype == jnp.bfloat16, name
        assert max_error(got, want) <= 2.0**-8, name

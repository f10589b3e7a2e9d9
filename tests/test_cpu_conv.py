"""The CPU convolution and pooling against lax: values, gradients, ties and dispatch.

Tolerance: float32 results may differ from lax's in summation order only, so
every comparison allows 1e-5 of the largest magnitude of the reference.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn.nn import cpu_conv, cpu_pool

TOLERANCE = 1e-5


def assert_close(actual, expected):
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * max(scale, 1.0))


def random(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def assert_same_conv(x, kernel, **options):
    """Output and both gradients of ``conv2d`` match ``conv2d_lax``; ours in one jit."""
    ref, ref_vjp = jax.vjp(lambda x, k: cpu_conv.conv2d_lax(x, k, **options), x, kernel)
    cotangent = random(9, ref.shape)

    @jax.jit
    def ours(x, kernel, cotangent):
        y, vjp = jax.vjp(lambda x, k: cpu_conv.conv2d(x, k, **options), x, kernel)
        return y, *vjp(cotangent)

    y, dx, dkernel = ours(x, kernel, cotangent)
    assert y.shape == ref.shape
    assert_close(y, ref)
    for got, want in zip((dx, dkernel), ref_vjp(cotangent)):
        assert_close(got, want)


# (batch, height, width, in channels, out channels, kernel height, kernel width)
SHAPES = [(1, 7, 7, 1, 4, 3, 3), (3, 9, 8, 3, 5, 3, 2), (2, 6, 5, 4, 2, 1, 1)]
PADDINGS = ["valid", "same", ((1, 2), (0, 1))]
# Every padding with every stride on the 3x3 and 3x2 kernels, then the 1x1 kernel, dilation,
# and stride 2 both ways on an odd batch.
CONV_CASES = [
    (shape, padding, strides, (1, 1))
    for shape, padding, strides in itertools.product(SHAPES[:2], PADDINGS, [(1, 1), (2, 1)])
] + [
    (SHAPES[2], "same", (2, 2), (1, 1)),
    (SHAPES[0], "same", (1, 1), (2, 2)),
    (SHAPES[1], ((1, 2), (0, 1)), (2, 2), (2, 1)),
    ((5, 11, 10, 3, 8, 3, 3), "same", (2, 2), (1, 1)),
]


@pytest.mark.parametrize("shape, padding, strides, dilation", CONV_CASES)
def test_conv2d_matches_lax(shape, padding, strides, dilation):
    n, h, w, c, o, kh, kw = shape
    assert_same_conv(
        random(0, (n, h, w, c)), random(1, (kh, kw, c, o)),
        strides=strides, padding=padding, dilation=dilation,
    )


# The im2col forward (4 or more input channels): every padding kind, strides, dilations and
# kernels from 2x3 to 5x5. A forward that ignored strides, dilation or padding fails here.
WIDE_CASES = [
    ((2, 9, 8, 5, 6, 3, 3), "valid", (1, 1), (1, 1)),
    ((2, 9, 8, 5, 6, 3, 3), "same", (2, 1), (2, 2)),
    ((2, 9, 8, 5, 6, 3, 2), ((1, 2), (0, 1)), (1, 2), (1, 2)),
    ((3, 11, 10, 4, 3, 5, 5), "same", (2, 2), (2, 1)),
    ((1, 12, 12, 8, 4, 2, 3), ((0, 3), (2, 0)), (3, 1), (3, 2)),
]


@pytest.mark.parametrize("shape, padding, strides, dilation", WIDE_CASES)
def test_conv2d_im2col_forward_matches_lax(shape, padding, strides, dilation):
    n, h, w, c, o, kh, kw = shape
    assert c > cpu_conv.TAPWISE_CHANNELS
    assert_same_conv(
        random(0, (n, h, w, c)), random(1, (kh, kw, c, o)),
        strides=strides, padding=padding, dilation=dilation,
    )


def test_conv2d_im2col_forward_in_chunks_with_a_leftover(monkeypatch):
    x, kernel = random(0, (7, 9, 8, 5)), random(1, (3, 3, 5, 4))
    options = {"strides": (1, 2), "padding": ((2, 1), (1, 1)), "dilation": (2, 1)}
    geom = cpu_conv.geometry((9, 8), (3, 3), **options)
    patch_bytes = 4 * 8 * 4 * 3 * 3 * 5  # one image's patches: 8x4 positions x 45 values
    monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", 3 * patch_bytes)
    assert cpu_conv._chunk(x, kernel, geom) == 3  # 7 = 2 chunks of 3 + 1 left over
    assert_same_conv(x, kernel, **options)


# (shape as above, with in and out channels multiples of groups), groups, padding, strides,
# dilation: 4 inputs per group (a product per group), 2 per group (one tapwise sum), and a
# depthwise convolution with 2 outputs per channel.
GROUPED_CASES = [
    ((2, 9, 8, 8, 6, 3, 3), 2, "same", (1, 1), (1, 1)),
    ((2, 9, 8, 8, 4, 3, 2), 4, ((1, 2), (0, 1)), (2, 1), (1, 2)),
    ((3, 9, 8, 6, 12, 3, 3), 6, "same", (1, 2), (2, 2)),
]


@pytest.mark.parametrize("shape, groups, padding, strides, dilation", GROUPED_CASES)
def test_grouped_conv2d_matches_lax_feature_group_count(shape, groups, padding, strides,
                                                        dilation):
    n, h, w, c, o, kh, kw = shape
    x, kernel = random(0, (n, h, w, c)), random(1, (kh, kw, c // groups, o))
    options = {"strides": strides, "padding": padding, "dilation": dilation, "groups": groups}
    assert_same_conv(x, kernel, **options)
    text = jax.jit(lambda x, k: cpu_conv.conv2d(x, k, **options)).lower(x, kernel).as_text()
    assert "stablehlo.convolution" not in text


def assert_same_conv_bias_relu(x, kernel, bias, **options):
    """``conv2d(..., bias, activation="relu")`` against ``relu(conv2d_lax + bias)``, with grads."""
    def reference(x, k, b):
        return jax.nn.relu(cpu_conv.conv2d_lax(x, k, **options) + b)

    ref, ref_vjp = jax.vjp(reference, x, kernel, bias)
    cotangent = random(9, ref.shape)

    @jax.jit
    def ours(x, kernel, bias, cotangent):
        y, vjp = jax.vjp(lambda x, k, b: cpu_conv.conv2d(
            x, k, bias=b, activation="relu", **options), x, kernel, bias)
        return y, *vjp(cotangent)

    got = ours(x, kernel, bias, cotangent)
    assert got[0].shape == ref.shape
    assert 0.2 < float(jnp.mean(ref > 0)) < 0.8  # the ReLU cuts a good share of outputs
    for value, want in zip(got, (ref, *ref_vjp(cotangent))):
        assert_close(value, want)


@pytest.mark.parametrize("channels, groups", [(2, 1), (5, 1), (8, 2), (6, 6)])
def test_bias_and_relu_inside_the_convolution_match_lax(channels, groups):
    # Tapwise, im2col, grouped im2col and depthwise, with stride, padding and dilation.
    x, kernel = random(0, (7, 9, 8, channels)), random(1, (3, 3, channels // groups, 6))
    assert_same_conv_bias_relu(x, kernel, random(2, (6,)), strides=(1, 2), padding="same",
                               dilation=(2, 1), groups=groups)


def test_bias_and_relu_in_chunks_with_a_leftover(monkeypatch):
    x, kernel = random(0, (7, 8, 8, 5)), random(1, (3, 3, 5, 4))
    monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", 3 * 4 * 8 * 8 * 3 * 3 * 5)
    assert cpu_conv._chunk(x, kernel, cpu_conv.geometry((8, 8), (3, 3), 1, "same")) == 3
    assert_same_conv_bias_relu(x, kernel, random(2, (4,)), padding="same")


def test_conv2d_in_chunks_with_leftover_images(monkeypatch):
    x, kernel = random(0, (7, 6, 6, 3)), random(1, (3, 3, 3, 4))
    patch_bytes = 4 * 4 * 3 * 3 * 3 * 4  # one image's patches: 16 positions x 27 values
    monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", 3 * patch_bytes)
    geom = cpu_conv.geometry((6, 6), (3, 3), 1, "valid")
    assert cpu_conv._chunk(x, kernel, geom) == 3  # 7 = 2 chunks of 3 + 1 left over
    assert_same_conv(x, kernel)
    monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", 7 * patch_bytes)
    assert cpu_conv._chunk(x, kernel, geom) == 7  # one chunk: the whole batch
    assert_same_conv(x, kernel)


def test_chunk_size_prefers_a_divisor_of_the_batch(monkeypatch):
    monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", 6)
    assert cpu_conv.chunk_size(128, 1) == 4
    assert cpu_conv.chunk_size(7, 1) == 6
    assert cpu_conv.chunk_size(3, 1) == 3
    assert cpu_conv.chunk_size(128, 100) == 1


def test_conv2d_on_cpu_lowers_to_products_not_a_convolution():
    x, kernel = random(0, (2, 8, 8, 3)), random(1, (3, 3, 3, 4))

    def loss(x, kernel):
        return jnp.sum(cpu_conv.conv2d(x, kernel, padding="same") ** 2)

    fast = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).as_text()
    assert "stablehlo.dot_general" in fast
    assert "stablehlo.convolution" not in fast
    reference = jax.jit(lambda x, k: cpu_conv.conv2d_lax(x, k)).lower(x, kernel)
    assert "stablehlo.convolution" in reference.as_text()


def test_conv2d_forward_is_tapwise_up_to_three_channels_and_a_product_above():
    def forward_text(channels):
        x, kernel = random(0, (2, 8, 8, channels)), random(1, (3, 3, channels, 4))
        return jax.jit(lambda x, k: cpu_conv.conv2d(x, k)).lower(x, kernel).as_text()

    assert cpu_conv.TAPWISE_CHANNELS == 3
    for channels in (1, 3):
        assert "stablehlo.dot_general" not in forward_text(channels)
    assert "stablehlo.dot_general" in forward_text(4)
    # The tapwise forward on an RGB-like input, with stride and padding, against lax.
    assert_same_conv(random(2, (3, 10, 9, 3)), random(3, (3, 3, 3, 6)), strides=2, padding="same")


def test_conv2d_exports_both_branches_for_several_platforms():
    x, kernel = random(0, (2, 8, 8, 3)), random(1, (3, 3, 3, 4))
    exported = jax.export.export(jax.jit(cpu_conv.conv2d), platforms=("cpu", "cuda"))(x, kernel)
    assert "stablehlo.convolution" in exported.mlir_module()  # the cuda branch
    assert_close(exported.call(x, kernel), cpu_conv.conv2d_lax(x, kernel))


@pytest.mark.parametrize(
    "x_shape, kernel_shape, options, message",
    [
        ((8, 8, 3), (3, 3, 3, 4), {}, "x must be NHWC"),
        ((1, 8, 8, 3), (3, 3, 4), {}, "kernel must be HWIO"),
        ((1, 8, 8, 3), (3, 3, 2, 4), {}, "input channels 2"),
        ((1, 8, 8, 3), (3, 3, 3, 4), {"strides": 0}, "strides must be"),
        ((1, 8, 8, 3), (3, 3, 3, 4), {"dilation": (1, 2, 3)}, "dilation must be"),
        ((1, 8, 8, 3), (3, 3, 3, 4), {"padding": "full"}, "padding must be"),
        ((1, 8, 8, 3), (3, 3, 3, 4), {"padding": ((1, -1), (0, 0))}, "padding must be"),
        ((1, 2, 8, 3), (3, 3, 3, 4), {}, "does not fit"),
        ((1, 8, 8, 4), (3, 3, 2, 4), {"groups": 0}, "groups must be"),
        ((1, 8, 8, 6), (3, 3, 2, 4), {"groups": 2}, "input channels 2 x groups 2"),
        ((1, 8, 8, 4), (3, 3, 2, 3), {"groups": 2}, "not a multiple of groups"),
        ((1, 8, 8, 3), (3, 3, 3, 4), {"bias": jnp.zeros(3)}, r"bias must have shape \(4,\)"),
        ((1, 8, 8, 3), (3, 3, 3, 4), {"activation": "tanh"}, "activation must be"),
    ],
)
def test_conv2d_rejects_bad_arguments(x_shape, kernel_shape, options, message):
    with pytest.raises(ValueError, match=message):
        cpu_conv.conv2d(jnp.zeros(x_shape), jnp.zeros(kernel_shape), **options)


POOLS = [
    ((2, 8, 8, 3), (2, 2), None, "valid"),
    ((3, 9, 7, 2), (2, 2), None, "valid"),  # odd sizes: the last row and column are dropped
    ((1, 9, 8, 1), (3, 3), (2, 2), "same"),
    ((2, 7, 7, 4), (3, 2), (1, 2), ((1, 0), (1, 1))),
]


@pytest.mark.parametrize("shape, window, strides, padding", POOLS)
@pytest.mark.parametrize("kind, ties", [("max", False), ("max", True), ("avg", False)])
def test_pools_match_lax(kind, ties, shape, window, strides, padding):
    fast = {"max": cpu_pool.max_pool2d, "avg": cpu_pool.avg_pool2d}[kind]
    reference = {"max": cpu_pool.max_pool2d_lax, "avg": cpu_pool.avg_pool2d_lax}[kind]
    x = random(0, shape)
    if ties:  # few distinct values, so most windows hold their maximum more than once
        x = jnp.round(x)
    ours, ours_vjp = jax.vjp(jax.jit(lambda x: fast(x, window, strides, padding)), x)
    ref, ref_vjp = jax.vjp(lambda x: reference(x, window, strides, padding), x)
    assert_close(ours, ref)
    cotangent = random(1, ref.shape)
    assert_close(ours_vjp(cotangent)[0], ref_vjp(cotangent)[0])


def test_max_pool_gradient_goes_to_the_first_maximum_only():
    x = jnp.array([[1.0, 5.0, 5.0, 2.0], [5.0, 0.0, 3.0, 3.0]]).reshape(1, 2, 4, 1)
    y, vjp = jax.vjp(cpu_pool.max_pool2d, x)
    np.testing.assert_array_equal(y.ravel(), [5.0, 5.0])
    grad = vjp(jnp.ones_like(y))[0].reshape(2, 4)
    np.testing.assert_array_equal(grad, [[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    _, ref_vjp = jax.vjp(cpu_pool.max_pool2d_lax, x)
    np.testing.assert_array_equal(ref_vjp(jnp.ones_like(y))[0].reshape(2, 4), grad)


def test_avg_pool_counts_padding_in_the_window():
    y = cpu_pool.avg_pool2d(jnp.ones((1, 2, 2, 1)), (2, 2), (2, 2), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(y.ravel(), [0.25, 0.25, 0.25, 0.25])


def test_max_pool_on_cpu_lowers_without_select_and_scatter():
    x = random(0, (2, 8, 8, 3))
    fast = jax.jit(jax.grad(lambda x: jnp.sum(cpu_pool.max_pool2d(x) ** 2))).lower(x)
    assert "select_and_scatter" not in fast.as_text()
    reference = jax.jit(jax.grad(lambda x: jnp.sum(cpu_pool.max_pool2d_lax(x) ** 2))).lower(x)
    assert "stablehlo.select_and_scatter" in reference.as_text()


def test_pools_reject_bad_arguments():
    with pytest.raises(ValueError, match="x must be NHWC"):
        cpu_pool.max_pool2d(jnp.zeros((4, 4, 1)))
    with pytest.raises(ValueError, match="window must be"):
        cpu_pool.avg_pool2d(jnp.zeros((1, 4, 4, 1)), window=(2, 0))

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnlearn as fl
from fnlearn import nn
from fnlearn.nn import conv


def numpy_conv(x, kernel, stride, pads, dilation=(1, 1)):
    """Cross-correlation written as loops: NHWC input, HWIO kernel, explicit padding."""
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
    kh, kw, _, out_ch = kernel.shape
    span_h, span_w = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    oh = (x.shape[1] - span_h) // stride[0] + 1
    ow = (x.shape[2] - span_w) // stride[1] + 1
    y = np.zeros((x.shape[0], oh, ow, out_ch))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    pixel = x[:, i * stride[0] + a * dilation[0], j * stride[1] + b * dilation[1]]
                    y[:, i, j] += pixel @ kernel[a, b]
    return y


def test_conv2d_matches_a_numpy_loop_with_padding_stride_and_dilation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    layer = nn.Conv2D(4, (3, 2), strides=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))
    shape, params = layer.init(jax.random.key(0), (7, 6, 3))
    params = {"kernel": params["kernel"], "bias": jnp.arange(4, dtype=jnp.float32)}
    got = np.asarray(layer.apply(params, x))
    want = numpy_conv(x, np.asarray(params["kernel"]), (2, 1), ((1, 0), (2, 1)), (1, 2))
    want += np.arange(4)
    assert got.shape == (2, *shape) == want.shape == (2, 3, 7, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv2d_matches_lax_reference_and_same_padding_is_tensorflows():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 9, 8, 2)), jnp.float32)
    layer = nn.Conv2D(5, 4, strides=2, padding="same", use_bias=False)
    shape, params = layer.init(jax.random.key(1), (9, 8, 2))
    assert set(params) == {"kernel"}
    got = layer.apply(params, x)
    # lax's "SAME" is TensorFlow's: output ceil(n / stride), extra pixel at the end.
    want = jax.lax.conv_general_dilated(x, params["kernel"], (2, 2), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert got.shape == (3, *shape) == (3, 5, 4, 5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert conv.explicit_padding("same", (9, 8), (4, 4), (2, 2)) == ((1, 2), (1, 1))


@pytest.mark.parametrize("size,kernel,stride,expected", [
    ((28, 28), 3, 1, (28, 28)), ((28, 28), 3, 2, (14, 14)), ((27, 25), 3, 2, (14, 13)),
    ((5, 5), 5, 3, (2, 2)), ((1, 7), 3, 4, (1, 2)),
])
def test_same_padding_output_is_ceil_of_size_over_stride(size, kernel, stride, expected):
    shape, _ = nn.Conv2D(2, kernel, stride, "same").init(jax.random.key(0), (*size, 1))
    assert shape == (*expected, 2)
    assert tuple(math.ceil(n / stride) for n in size) == expected
    pool_shape, _ = nn.MaxPool2D(kernel, stride, "same").init(jax.random.key(0), (*size, 1))
    assert pool_shape == (*expected, 1)


def test_conv_config_records_explicit_padding_for_converters():
    assert nn.Conv2D(8, 3, padding="same").config["explicit_padding"] == ((1, 1), (1, 1))
    assert nn.Conv2D(8, 3).config["explicit_padding"] == ((0, 0), (0, 0))
    assert nn.Conv2D(8, 3, padding=2).config["explicit_padding"] == ((2, 2), (2, 2))
    # Strided "same" depends on the input size: computed by explicit_padding then.
    assert nn.Conv2D(8, 3, 2, padding="same").config["explicit_padding"] is None
    assert nn.Conv2D(8, 3).config["kernel_size"] == (3, 3)


@pytest.mark.parametrize("activation", ["relu", "tanh", None])
def test_conv2d_activation_and_bias_match_lax_with_gradients(activation):
    layer = nn.Conv2D(6, 3, padding="same", activation=activation, init="torch")
    _, params = layer.init(jax.random.key(0), (9, 8, 5))
    x = jax.random.normal(jax.random.key(1), (3, 9, 8, 5))
    act = {"relu": jax.nn.relu, "tanh": jnp.tanh, None: lambda y: y}[activation]

    def reference(params, x):
        y = jax.lax.conv_general_dilated(x, params["kernel"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return act(y + params["bias"])

    def loss(apply, params, x):
        return jnp.sum(jnp.sin(apply(params, x)))

    got = jax.value_and_grad(loss, argnums=(1, 2))(jax.jit(layer.apply), params, x)
    want = jax.value_and_grad(loss, argnums=(1, 2))(reference, params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels, filters, groups", [(8, 6, 2), (6, 12, 6)])
def test_grouped_conv2d_matches_lax_feature_group_count(channels, filters, groups):
    layer = nn.Conv2D(filters, 3, padding="same", groups=groups, init="torch")
    shape, params = layer.init(jax.random.key(0), (9, 8, channels))
    # Keras and PyTorch store in / groups input channels per kernel: torch's parameter count.
    assert params["kernel"].shape == (3, 3, channels // groups, filters)
    assert nn.count_params(params) == 9 * channels // groups * filters + filters
    assert layer.config["groups"] == groups
    x = jax.random.normal(jax.random.key(1), (2, 9, 8, channels))
    want = jax.lax.conv_general_dilated(
        x, params["kernel"], (1, 1), "SAME", feature_group_count=groups,
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["bias"]
    got = layer.apply(params, x)
    assert got.shape == (2, *shape) == (2, 9, 8, filters)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_grouped_conv2d_refuses_channels_that_do_not_split():
    with pytest.raises(ValueError, match="filters 6 must be a multiple of groups 4"):
        nn.Conv2D(6, 3, groups=4)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        nn.Conv2D(6, 3, groups=0)
    with pytest.raises(ValueError, match="input channels 5 .* multiple of groups 2"):
        nn.Conv2D(6, 3, groups=2).init(jax.random.key(0), (8, 8, 5))


def test_torch_init_bounds_are_inverse_sqrt_fan_in_for_weight_and_bias():
    _, params = nn.Conv2D(64, 3, init="torch").init(jax.random.key(3), (12, 12, 32))
    bound = 1 / math.sqrt(32 * 3 * 3)
    kernel, bias = np.asarray(params["kernel"]), np.asarray(params["bias"])
    assert kernel.shape == (3, 3, 32, 64)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
    assert kernel.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert np.abs(bias).max() <= bound and bias.std() > 0.3 * bound


def test_keras_init_is_glorot_with_receptive_field_fans_and_zero_bias():
    _, params = nn.Conv2D(64, 3).init(jax.random.key(4), (12, 12, 32))
    limit = math.sqrt(6 / (3 * 3 * 32 + 3 * 3 * 64))
    kernel = np.asarray(params["kernel"])
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.99 * limit
    assert kernel.std() == pytest.approx(limit / math.sqrt(3), rel=0.02)
    assert not np.asarray(params["bias"]).any()


def test_pools_and_reshape():
    x = jnp.arange(2 * 5 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 5, 3)
    mx = nn.MaxPool2D(2).apply({}, x)
    avg = nn.AvgPool2D(2).apply({}, x)
    # "valid" drops the fifth row and column, as both frameworks do.
    assert mx.shape == avg.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(mx[:, 0, 0], x[:, 1, 1])
    np.testing.assert_allclose(avg[:, 0, 0], x[:, :2, :2].mean(axis=(1, 2)))
    # With "same" padding, averages count only the real pixels.
    avg_same = nn.AvgPool2D(2, padding="same").apply({}, x)
    assert avg_same.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(avg_same[:, 2, 2], x[:, 4, 4])
    max_neg = nn.MaxPool2D(2, padding="same").apply({}, -x - 1)
    np.testing.assert_array_equal(max_neg[:, 2, 2], -x[:, 4, 4] - 1)
    gap = nn.GlobalAveragePooling2D()
    assert gap.init(None, (5, 5, 3))[0] == (3,)
    np.testing.assert_allclose(gap.apply({}, x), x.mean(axis=(1, 2)))
    reshape = nn.Reshape((28, 28, 1))
    assert reshape.init(None, (784,))[0] == (28, 28, 1)
    assert reshape.apply({}, jnp.zeros((4, 784))).shape == (4, 28, 28, 1)
    assert nn.Reshape((-1, 4)).init(None, (2, 6))[0] == (3, 4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="filters"):
        nn.Conv2D(0, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2D(8, (3, 0))
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2D(8, 3, padding="full")
    with pytest.raises(ValueError, match="init"):
        nn.Conv2D(8, 3, init="he")
    with pytest.raises(ValueError, match=r"\(height, width, channels\).*Reshape"):
        nn.Conv2D(8, 3).init(jax.random.key(0), (28, 28))
    with pytest.raises(ValueError, match="does not fit"):
        nn.MaxPool2D(3).init(jax.random.key(0), (2, 2, 1))
    with pytest.raises(ValueError, match="cannot turn"):
        nn.Reshape((5, 5)).init(None, (28,))
    with pytest.raises(ValueError, match="target_shape"):
        nn.Reshape((-1, -1))


def test_reference_models_have_the_reference_parameter_counts():
    keras_text = nn.summary(fl.models.keras_convnet(), (28, 28, 1))
    torch_text = nn.summary(fl.models.torch_mnist_net(), (28, 28, 1))
    assert "Total params: 34,826" in keras_text and "(None, 5, 5, 64)" in keras_text
    assert "Total params: 1,199,882" in torch_text and "(None, 9216)" in torch_text
    assert nn.count_params(nn.init(fl.models.torch_mnist_net(), 0, (28, 28, 1))) == 1_199_882


def test_torch_model_preprocessing_is_totensor_then_normalize_in_float32():
    model = fl.models.torch_mnist_net()
    first_two = nn.serial(*model.children[:2])
    pixels = np.arange(256, dtype=np.uint8)[:, None, None, None]
    got = np.asarray(first_two.apply({}, pixels)).ravel()
    # torchvision: ToTensor gives float32 p / 255, Normalize (x - 0.1307) / 0.3081 in float32.
    scaled = (np.arange(256) / 255.0).astype(np.float32)
    want = (scaled - np.float32(0.1307)) / np.float32(0.3081)
    # XLA multiplies by 1/0.3081 rounded: at most one float32 ulp away (measured 2.4e-7).
    np.testing.assert_allclose(got, want, rtol=0, atol=2.5e-7)

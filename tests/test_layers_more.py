"""The layers beyond the first models, without PyTorch or Keras: shapes, meanings, refusals.
Their values against the live frameworks are in tests/parity/test_layers.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnlearn as fl
from fnlearn import nn

RNG = np.random.default_rng(0)


def test_activation_names_and_layers():
    x = jnp.linspace(-4.0, 4.0, 9)
    np.testing.assert_allclose(nn.ACTIVATIONS["leaky_relu"](x), jnp.where(x > 0, x, 0.2 * x))
    np.testing.assert_allclose(nn.ACTIVATIONS["hard_sigmoid"](x), jnp.clip(x / 6 + 0.5, 0, 1),
                               rtol=1e-6)
    np.testing.assert_allclose(nn.ACTIVATIONS["relu6"](x), jnp.clip(x, 0, 6))
    np.testing.assert_allclose(nn.ACTIVATIONS["swish"](x), x * jax.nn.sigmoid(x), rtol=1e-6)
    assert nn.ACTIVATIONS["gelu"](x)[2] != nn.ACTIVATIONS["gelu_tanh"](x)[2]  # two formulas
    assert nn.LeakyReLU().config["negative_slope"] == 0.3
    assert nn.LeakyReLU(convention="torch").config["negative_slope"] == 0.01
    np.testing.assert_allclose(nn.ELU(0.5).apply({}, x[:1]), 0.5 * (np.exp(-4.0) - 1), rtol=1e-6)
    assert nn.GELU(approximate=True).kind == "gelu_tanh"
    with pytest.raises(ValueError, match="LeakyReLU negative_slope must be a number"):
        nn.LeakyReLU("0.1")


def test_conv2d_transpose_is_the_adjoint_of_conv2d():
    # <conv(x), y> = <x, conv_transpose(y)> for the same kernel, strides and padding.
    conv = nn.Conv2D(4, 3, strides=2, padding=((1, 1), (1, 1)), use_bias=False)
    transpose = nn.Conv2DTranspose(3, 3, strides=2, padding=1, output_padding=1,
                                   use_bias=False)
    x = jnp.asarray(RNG.normal(size=(2, 8, 8, 3)), jnp.float32)
    params = nn.init(conv, 0, (8, 8, 3))
    y = conv.apply(params, x)
    assert y.shape == (2, 4, 4, 4)
    assert transpose.init(0, (4, 4, 4))[0] == (8, 8, 3)
    probe = jnp.asarray(RNG.normal(size=y.shape), jnp.float32)
    back = transpose.apply(params, probe)  # HWIO (3, 3, 3, 4) is Keras's (kh, kw, out, in)
    np.testing.assert_allclose(jnp.sum(y * probe), jnp.sum(x * back), rtol=1e-5)


def test_conv2d_transpose_output_padding_rows_get_nothing_but_the_bias():
    # PyTorch's output_padding adds rows past the full output: no input pixel reaches them.
    x = jnp.asarray(RNG.normal(size=(2, 4, 4, 3)), jnp.float32)
    plain = nn.Conv2DTranspose(2, 3, 2, 0)
    padded = nn.Conv2DTranspose(2, 3, 2, 0, output_padding=1)
    params = {"kernel": jnp.asarray(RNG.normal(size=(3, 3, 2, 3)), jnp.float32),
              "bias": jnp.asarray([0.5, -1.0])}
    full, extended = plain.apply(params, x), padded.apply(params, x)
    assert full.shape == (2, 9, 9, 2) and extended.shape == (2, 10, 10, 2)
    np.testing.assert_allclose(extended[:, :9, :9], full, rtol=1e-6)
    np.testing.assert_array_equal(extended[:, 9, :], np.broadcast_to([0.5, -1.0], (2, 10, 2)))


def test_conv2d_transpose_and_its_gradient_are_products_on_cpu():
    # XLA's CPU transposed convolution (lhs-dilated) ran a DCGAN generator step 27-35x
    # slower inside fit's compiled epoch than these products (docs/generative.md).
    layer = nn.Conv2DTranspose(4, 5, 2, "same", use_bias=False)
    params = nn.init(layer, 0, (7, 7, 8))
    x = jnp.ones((2, 7, 7, 8), jnp.float32)
    step = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), argnums=(0, 1)))
    assert "stablehlo.convolution" not in step.lower(params, x).as_text()


def test_transposed_convolution_output_sizes_follow_both_frameworks():
    shapes = {
        "keras valid": nn.Conv2DTranspose(2, 3, 2).init(0, (5, 5, 1))[0],
        "keras same": nn.Conv2DTranspose(2, 3, 2, "same").init(0, (5, 5, 1))[0],
        "keras valid, stride beyond the kernel": nn.Conv2DTranspose(2, 2, 3).init(
            0, (5, 5, 1))[0],
        "torch": nn.Conv2DTranspose(2, 3, 2, 1, output_padding=1).init(0, (5, 5, 1))[0],
    }
    assert shapes == {"keras valid": (11, 11, 2), "keras same": (10, 10, 2),
                      "keras valid, stride beyond the kernel": (15, 15, 2),
                      "torch": (10, 10, 2)}
    with pytest.raises(ValueError, match="output_padding .* must be smaller than the stride"):
        nn.Conv2DTranspose(2, 3, 2, 1, output_padding=2)


def test_conv1d_causal_sees_no_future_and_depthwise_keeps_channels_apart():
    conv = nn.Conv1D(1, 3, padding="causal", use_bias=False)
    params = {"kernel": jnp.ones((3, 1, 1))}
    x = jnp.zeros((1, 6, 1)).at[0, 3, 0].set(1.0)
    np.testing.assert_array_equal(conv.apply(params, x)[0, :, 0], [0, 0, 0, 1, 1, 1])
    depthwise = nn.DepthwiseConv2D(1, depth_multiplier=2, use_bias=False)
    kernel = jnp.arange(1.0, 7.0).reshape(1, 1, 3, 2)
    out = depthwise.apply({"kernel": kernel}, jnp.ones((1, 2, 2, 3)))
    np.testing.assert_array_equal(out[0, 0, 0], [1, 2, 3, 4, 5, 6])  # channel c*m + j


def test_norms_normalize_the_axes_they_name():
    x = jnp.asarray(RNG.normal(3.0, 2.0, size=(4, 5, 6)), jnp.float32)
    y = nn.LayerNorm(epsilon=1e-6).apply({}, x)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(-1), 1, atol=1e-3)
    params = nn.init(nn.LayerNorm((-2, -1)), 0, (5, 6))
    assert params["gamma"].shape == (5, 6)
    grouped = nn.GroupNorm(2, 1e-6).apply({}, x).reshape(4, 5, 2, 3)
    np.testing.assert_allclose(grouped.mean((1, 3)), 0, atol=1e-5)
    with pytest.raises(ValueError, match="GroupNorm groups 4 must divide the channels"):
        nn.GroupNorm(4).init(0, (5, 6))
    with pytest.raises(ValueError, match="LayerNorm axis must be a non-zero int"):
        nn.LayerNorm(0)
    with pytest.raises(ValueError, match=r"LayerNorm axis 3 does not fit per-example inputs"):
        nn.LayerNorm(3).init(0, (5,))


def test_embedding_looks_up_rows_and_refuses_silently_clipping():
    layer = nn.Embedding(5, 2, init="torch", padding_idx=0)
    params = nn.init(layer, 0, (3,))
    assert not np.asarray(params["embeddings"][0]).any()
    ids = jnp.array([[1, 0, 4]])
    np.testing.assert_array_equal(layer.apply(params, ids)[0, 2], params["embeddings"][4])
    grads = jax.grad(lambda p: layer.apply(p, ids).sum())(params)["embeddings"]
    assert not np.asarray(grads[0]).any() and np.asarray(grads[1]).all()
    assert np.isnan(np.asarray(layer.apply(params, jnp.array([[5]])))).all()


def test_reshaping_layers():
    x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    up = nn.UpSampling2D((1, 2)).apply({}, x)
    np.testing.assert_array_equal(up[0, :, :, 0], [[0, 0, 1, 1], [2, 2, 3, 3]])
    padded = nn.ZeroPadding2D((1, 0, 0, 2), convention="torch").apply({}, x)
    assert padded.shape == (1, 4, 3, 1) and float(padded[0, 0, 1, 0]) == 0.0
    assert nn.ZeroPadding2D((1, 2)).init(0, (2, 2, 1))[0] == (4, 6, 1)
    pooled = nn.AdaptiveAvgPool2D((1, 2)).apply({}, jnp.arange(6.0).reshape(1, 1, 3, 2))
    # Width 3 into 2 windows: [0, 2) and [1, 3), overlapping, as PyTorch's.
    np.testing.assert_allclose(pooled[0, 0, :, 0], [1.0, 3.0])


def test_spatial_dropout_drops_whole_channels():
    layer = nn.SpatialDropout2D(0.5)
    x = jnp.ones((8, 4, 4, 16))
    y = np.asarray(layer.apply({}, x, key=jax.random.key(0), train=True))
    per_channel = y.transpose(0, 3, 1, 2).reshape(8, 16, 16)
    assert all(len(set(c.tolist())) == 1 for example in per_channel for c in example)
    assert set(np.unique(y)) == {0.0, 2.0}
    assert np.array_equal(layer.apply({}, x), x)


def test_augmentation_is_training_only_per_example_and_keyed():
    x = jnp.asarray(RNG.normal(size=(64, 5, 5, 1)), jnp.float32)
    flip, crop = nn.RandomFlip("horizontal"), nn.RandomCrop(2)
    for layer in (flip, crop):
        assert np.array_equal(layer.apply({}, x), x)
        with pytest.raises(ValueError, match="needs a PRNG key"):
            layer.apply({}, x, train=True)
    key = jax.random.key(4)
    flipped = np.asarray(flip.apply({}, x, key=key, train=True))
    mirrored = [np.array_equal(f, np.flip(o, 1)) for f, o in zip(flipped, np.asarray(x))]
    same = [np.array_equal(f, o) for f, o in zip(flipped, np.asarray(x))]
    assert all(m or s for m, s in zip(mirrored, same)) and 16 < sum(mirrored) < 48
    cropped = np.asarray(crop.apply({}, x, key=key, train=True))
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for out, source in zip(cropped, padded):  # each a 5x5 window of its padded image
        assert any(np.array_equal(out, source[i:i + 5, j:j + 5])
                   for i in range(5) for j in range(5))
    assert np.array_equal(cropped, crop.apply({}, x, key=key, train=True))


def test_fit_with_augmentation_is_bit_identical_by_seed():
    model = nn.serial(nn.RandomFlip(), nn.RandomCrop(1), nn.SpatialDropout2D(0.2),
                      nn.Conv2D(2, 3), nn.Flatten(), nn.Dense(2, "softmax"))
    x = RNG.normal(size=(32, 6, 6, 1)).astype(np.float32)
    y = RNG.integers(0, 2, 32)

    def run(seed):
        state, _ = fl.fit(model, x, y, loss="sparse_categorical_crossentropy",
                          optimizer=optax.sgd(0.1), epochs=2, batch_size=8, seed=seed,
                          verbose=0)
        return np.asarray(state.params["conv2d_0"]["kernel"])

    first = run(0)
    assert np.array_equal(first, run(0)) and not np.array_equal(first, run(1))

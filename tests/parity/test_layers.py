"""Each layer against its live PyTorch and Keras twins: forward, parameter and input gradients.

The twins come from the registry (``parity.to_torch_module`` / ``to_keras_model``), with
fnlearn's (non-trivial) weights copied in; the gradients come back through the same
converters (a twin whose weights are set to its gradients, read with
``variables_from_torch`` / ``variables_from_keras``), so every layout transpose is
exercised both ways. The loss is ``sum(outputs * r)`` for a fixed random ``r``.

Tolerances, as the rest of the suite: outputs within 1e-5 relative (and 1e-5 of the
largest |output| absolute); each gradient tensor within 1e-5 relative and 1e-6 of its
largest entry absolute.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn import nn, parity

pytestmark = pytest.mark.parity

RTOL = 1e-5
GRAD_ATOL_FRACTION = 1e-6
BATCH = 4


def case(name, build, shape, frameworks=("torch", "keras"), ints=None, scale=1.0):
    return pytest.param(build, shape, frameworks, ints, scale, id=name)


CASES = [
    *[case(f"activation_{a}", lambda a=a: nn.serial(nn.Dense(6, init="torch"),
                                                     nn.Activation(a)), (5,), scale=3.0)
      for a in ("gelu", "gelu_tanh", "leaky_relu", "elu", "silu", "swish", "hard_sigmoid",
                "relu6", "tanh", "sigmoid")],
    case("dense_gelu_tanh", lambda: nn.serial(nn.Dense(6, "gelu_tanh")), (5,), scale=3.0),
    case("GELU_LeakyReLU_ELU_SiLU_layers", lambda: nn.serial(
        nn.Dense(6), nn.GELU(approximate=True), nn.Dense(6), nn.LeakyReLU(0.1), nn.Dense(6),
        nn.ELU(0.7), nn.Dense(6), nn.SiLU(), nn.HardSigmoid(), nn.ReLU6(), nn.Tanh(),
        nn.Sigmoid()), (5,), scale=3.0),
    case("conv1d_same_strided", lambda: nn.serial(nn.Conv1D(4, 3, 2, "same", activation="relu")),
         (11, 3)),
    case("conv1d_causal_dilated_torch_init", lambda: nn.serial(
        nn.Conv1D(4, 3, padding="causal", dilation=2, init="torch")), (10, 3)),
    case("conv1d_explicit", lambda: nn.serial(nn.Conv1D(5, 4, padding=((2, 1),),
                                                        use_bias=False)), (9, 2)),
    case("conv2d_transpose_torch_padding", lambda: nn.serial(nn.Conv2DTranspose(
        4, 3, 2, padding=1, output_padding=1, init="torch")), (5, 5, 3)),
    case("conv2d_transpose_valid", lambda: nn.serial(nn.Conv2DTranspose(4, (3, 2), 2,
                                                                        activation="tanh")),
         (4, 5, 3)),
    case("conv2d_transpose_dilated", lambda: nn.serial(nn.Conv2DTranspose(
        3, 3, 1, padding=2, dilation=2)), (5, 5, 2)),
    case("conv2d_transpose_keras_same", lambda: nn.serial(nn.Conv2DTranspose(4, 3, 2, "same")),
         (5, 5, 3), ("keras",)),
    case("conv2d_transpose_keras_same_output_padding", lambda: nn.serial(
        nn.Conv2DTranspose(4, 4, 3, "same", output_padding=1)), (4, 4, 2), ("keras",)),
    case("depthwise_same_strided", lambda: nn.serial(nn.DepthwiseConv2D(
        3, 2, "same", depth_multiplier=2, activation="relu")), (7, 7, 3)),
    case("depthwise_explicit_torch_init", lambda: nn.serial(nn.DepthwiseConv2D(
        (3, 2), padding=1, init="torch")), (6, 6, 4)),
    case("layer_norm_features", lambda: nn.serial(nn.LayerNorm()), (7,)),
    case("layer_norm_last_two_axes_torch", lambda: nn.serial(nn.LayerNorm(
        (-2, -1), convention="torch")), (5, 4)),
    case("layer_norm_image_channels", lambda: nn.serial(nn.LayerNorm(epsilon=1e-4)),
         (4, 4, 6)),
    case("layer_norm_scale_only", lambda: nn.serial(nn.LayerNorm(center=False)), (6,)),
    case("group_norm_image", lambda: nn.serial(nn.GroupNorm(3)), (4, 4, 6)),
    case("group_norm_features_torch", lambda: nn.serial(nn.GroupNorm(2, convention="torch")),
         (8,)),
    case("group_norm_sequence", lambda: nn.serial(nn.GroupNorm(2)), (5, 6)),
    case("batch_norm_features_inference", lambda: nn.serial(nn.Dense(5), nn.BatchNorm()),
         (4,)),
    case("batch_norm_features_torch_inference", lambda: nn.serial(
        nn.BatchNorm(convention="torch"), nn.Dense(3)), (6,)),
    case("embedding", lambda: nn.serial(nn.Embedding(10, 4), nn.Flatten(), nn.Dense(3)), (5,),
         ints=10),
    case("embedding_torch_padding_idx", lambda: nn.serial(
        nn.Embedding(10, 4, init="torch", padding_idx=0), nn.Flatten(), nn.Dense(3)), (6,),
         ("torch",), ints=10),
    case("upsampling_nearest", lambda: nn.serial(nn.UpSampling2D((2, 3))), (3, 3, 2)),
    case("upsampling_bilinear", lambda: nn.serial(nn.UpSampling2D(2, "bilinear")), (3, 4, 2)),
    case("zero_padding", lambda: nn.serial(nn.ZeroPadding2D(((1, 2), (0, 3))),
                                           nn.Conv2D(2, 2)), (3, 3, 2)),
    case("adaptive_avg_pool_uneven", lambda: nn.serial(nn.AdaptiveAvgPool2D((3, 2))),
         (7, 5, 2)),
    case("adaptive_avg_pool_even", lambda: nn.serial(nn.AdaptiveAvgPool2D(2)), (4, 6, 3)),
    case("adaptive_avg_pool_one", lambda: nn.serial(nn.AdaptiveAvgPool2D(1)), (5, 3, 2)),
    case("spatial_dropout_and_augmentation_at_inference", lambda: nn.serial(
        nn.RandomFlip(), nn.RandomCrop(2), nn.SpatialDropout2D(0.3), nn.Conv2D(2, 3)),
         (6, 6, 2)),
]


def non_trivial(model, shape):
    """Initial parameters, with scales and offsets (gamma, beta) and statistics moved off 1/0."""
    _, params, state = nn.init_with_state(model, 1, shape)
    rng = np.random.default_rng(3)

    def moved(path, leaf):
        name = jax.tree_util.keystr(path)
        if "gamma" in name or "var" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        if "beta" in name or "mean" in name:
            return jnp.asarray(rng.normal(0, 0.5, leaf.shape), jnp.float32)
        return leaf

    return (jax.tree_util.tree_map_with_path(moved, params),
            jax.tree_util.tree_map_with_path(moved, state))


def nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a


def inputs(shape, ints, scale):
    rng = np.random.default_rng(11)
    if ints:
        return rng.integers(0, ints, size=(BATCH, *shape)).astype(np.int32)
    return (scale * rng.normal(size=(BATCH, *shape))).astype(np.float32)


def ours(model, params, state, x, r):
    def loss(p, xx):
        out, _ = nn.apply(model, p, xx, state=state)
        return jnp.sum(out * r), out

    if np.issubdtype(x.dtype, np.integer):
        (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params, jnp.asarray(x))
        return np.asarray(out), grads, None
    (_, out), (grads, dx) = jax.value_and_grad(loss, (0, 1), has_aux=True)(params,
                                                                          jnp.asarray(x))
    return np.asarray(out), grads, np.asarray(dx)


def theirs_torch(torch, model, shape, params, state, x, r):
    module = parity.to_torch_module(model, shape, params, state).eval()
    xt = torch.from_numpy(nchw(x))
    if not np.issubdtype(x.dtype, np.integer):
        xt.requires_grad_(True)
    out = module(xt)
    (out * torch.from_numpy(nchw(r))).sum().backward()
    holder = copy.deepcopy(module)
    grads = dict(module.named_parameters())
    for name, p in holder.named_parameters():
        p.data = grads[name].grad.clone()
    dx = None if xt.grad is None else nhwc(xt.grad.numpy())
    return nhwc(out.detach().numpy()), parity.variables_from_torch(
        holder, model=model, input_shape=shape)[0], dx


def theirs_keras(tf, model, shape, params, state, x, r):
    keras_model = parity.to_keras_model(model, shape, params, state)
    xv = tf.constant(x)
    with tf.GradientTape() as tape:
        if x.dtype != np.int32:
            tape.watch(xv)
        out = keras_model(xv, training=False)
        value = tf.reduce_sum(out * r)
    variables = keras_model.trainable_variables
    *grads, dx = tape.gradient(value, [*variables, xv])
    for variable, grad in zip(variables, grads):
        variable.assign(grad)
    return out.numpy(), parity.variables_from_keras(keras_model, model=model,
                                                     input_shape=shape)[0], (
        None if dx is None else dx.numpy())


def check(record, what, out, grads, dx, expected):
    want_out, want_grads, want_dx = expected
    scale = float(np.abs(want_out).max()) or 1.0
    result = parity.compare(f"{what} forward", out, want_out, rtol=RTOL, atol=RTOL * scale)
    record("forward", f"max rel error {result.max_rel_error:.1e}")
    assert result.passed, str(result)
    pairs = [(jax.tree_util.keystr(path), leaf, want)
             for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(grads),
                                           jax.tree.leaves(want_grads))]
    assert jax.tree.structure(grads) == jax.tree.structure(want_grads)
    if want_dx is not None:
        pairs.append(("input", dx, want_dx))
    worst = 0.0
    for name, got, want in pairs:
        largest = float(np.abs(want).max()) or 1.0
        result = parity.compare(f"{what} gradient {name}", got, want, rtol=RTOL,
                                atol=GRAD_ATOL_FRACTION * largest)
        worst = max(worst, result.max_abs_error / largest)
        assert result.passed, str(result)
    record("gradients", f"worst abs error / largest |grad| {worst:.1e} over {len(pairs)} tensors")


def having(framework: str) -> list:
    """The cases whose settings have a twin in ``framework`` (a few have one twin only)."""
    return [c for c in CASES if framework in c.values[2]]


@pytest.mark.parametrize("build, shape, frameworks, ints, scale", having("torch"))
def test_layer_vs_torch(torch, build, shape, frameworks, ints, scale, record):
    model = build()
    params, state = non_trivial(model, shape)
    x = inputs(shape, ints, scale)
    out, grads, dx = ours(model, params, state, x, np.zeros(1, np.float32))
    r = np.random.default_rng(5).normal(size=out.shape).astype(np.float32)
    check(record, "torch", *ours(model, params, state, x, r),
          theirs_torch(torch, model, shape, params, state, x, r))


@pytest.mark.parametrize("build, shape, frameworks, ints, scale", having("keras"))
def test_layer_vs_keras(tf, keras, build, shape, frameworks, ints, scale, record):
    model = build()
    params, state = non_trivial(model, shape)
    x = inputs(shape, ints, scale)
    out, _, _ = ours(model, params, state, x, np.zeros(1, np.float32))
    r = np.random.default_rng(5).normal(size=out.shape).astype(np.float32)
    check(record, "keras", *ours(model, params, state, x, r),
          theirs_keras(tf, model, shape, params, state, x, r))


def test_batch_norm_on_features_trains_as_batchnorm1d(torch, record):
    model = nn.serial(nn.BatchNorm(convention="torch"))
    params, state = non_trivial(model, (6,))
    x = inputs((6,), None, 2.0)
    r = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)

    def loss(p, xx):
        out, new_state = nn.apply(model, p, xx, state=state, train=True)
        return jnp.sum(out * r), (out, new_state)

    (_, (out, new_state)), (grads, dx) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        params, jnp.asarray(x))
    module = parity.to_torch_module(model, (6,), params, state).train()
    assert type(module[0]).__name__ == "BatchNorm1d"
    xt = torch.from_numpy(x).requires_grad_(True)
    expected = module(xt)
    (expected * torch.from_numpy(r)).sum().backward()
    check(record, "torch train", out, {}, dx, (expected.detach().numpy(), {}, xt.grad.numpy()))
    np.testing.assert_allclose(new_state["batch_norm_0"]["var"], module[0].running_var.numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(grads["batch_norm_0"]["gamma"], module[0].weight.grad.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_a_wrong_twin_is_caught(torch):
    # A LeakyReLU slope that differs in the third decimal fails the forward check.
    model, shape = nn.serial(nn.LeakyReLU(0.1)), (5,)
    x = inputs(shape, None, 3.0)
    r = np.ones((BATCH, *shape), np.float32)
    module = torch.nn.Sequential(torch.nn.LeakyReLU(0.101))
    out = module(torch.from_numpy(x)).detach().numpy()
    with pytest.raises(AssertionError, match="MISMATCH"):
        check(lambda *a: None, "wrong", *ours(model, {}, {}, x, r), (out, {}, None))


def test_chains_of_the_new_layers_import_from_torch_and_keras(torch, keras):
    tnn = torch.nn
    net = tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1), tnn.GroupNorm(2, 8), tnn.GELU(approximate="tanh"),
        tnn.Dropout2d(0.2), tnn.Conv2d(8, 16, 3, groups=8), tnn.LeakyReLU(0.05),
        tnn.ZeroPad2d((1, 0, 0, 1)), tnn.MaxPool2d(2), tnn.Upsample(scale_factor=2),
        tnn.ConvTranspose2d(16, 4, 3, stride=2, padding=1, output_padding=1),
        tnn.AdaptiveAvgPool2d(3), tnn.Flatten(), tnn.Linear(36, 5), tnn.SiLU(),
        tnn.LayerNorm(5))
    imported = parity.from_torch(net, (3, 10, 10))
    assert imported.report.passed, str(imported.report)
    kinds = [layer.kind for layer in imported.model.children]
    assert "spatial_dropout2d" in kinds and "dropout" not in kinds  # channel dropout stays one
    assert kinds[4:7] == ["depthwise_conv2d", "leaky_relu", "zero_padding2d"]

    layers = keras.layers
    keras_model = keras.Sequential([
        keras.Input((8, 8, 3)), layers.DepthwiseConv2D(3, depth_multiplier=2, activation="elu"),
        layers.LayerNormalization(), layers.SpatialDropout2D(0.1), layers.UpSampling2D(2),
        layers.Conv2DTranspose(4, 3, strides=2, padding="same", activation="gelu"),
        layers.GroupNormalization(2), layers.AdaptiveAveragePooling2D(2), layers.Flatten(),
        layers.Dense(3, activation="hard_sigmoid")])
    imported = parity.from_keras(keras_model)
    assert imported.report.passed, str(imported.report)

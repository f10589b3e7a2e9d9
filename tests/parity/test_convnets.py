"""The two MNIST convnets against PyTorch and Keras: weights, forward, gradients, BatchNorm.

The models are fnlearn's ``keras_convnet()`` (Keras's "Simple MNIST convnet") and
``torch_mnist_net()`` (the PyTorch examples' ``Net``), on real MNIST images. Batches
are small (8-16 images): XLA's convolution gradients are slow on a CPU. Training
trajectories are in test_convnet_trajectories.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convnet_recipes import (
    FORWARD_RTOL,
    GRAD_ATOL_FRACTION,
    GRAD_RTOL,
    IMAGE,
    RECIPES,
    fnlearn_loss,
    keras_loss,
    nchw,
    torch_loss,
)

import fnlearn
from fnlearn import losses, models, nn, optim, parity

pytestmark = pytest.mark.parity

BATCH = 8


@pytest.fixture(scope="module")
def steps_data(mnist_images):
    x, y = mnist_images
    return x[:20 * BATCH], y[:20 * BATCH]


# --- 1. weights both ways, exact -------------------------------------------------------------


def small_bn_convnet(convention: str) -> nn.Layer:
    momentum = 0.1 if convention == "torch" else 0.99
    return nn.serial(
        nn.Conv2D(4, 3, padding="same", activation="relu"),
        nn.BatchNorm(momentum, convention=convention),
        nn.Conv2D(6, (3, 2), padding=((1, 0), (2, 1))),
        nn.MaxPool2D(2),
        nn.AvgPool2D(2),
        nn.Flatten(),
        nn.Dense(5),
    )


def non_trivial(model, shape=(12, 12, 3)):
    """Parameters and BatchNorm statistics that are not their initial ones."""
    _, params, state = nn.init_with_state(model, 3, shape)
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 2.0, a.shape), jnp.float32),
                         state)
    params = jax.tree.map(lambda a: a + jnp.asarray(rng.normal(0, 0.1, a.shape), jnp.float32),
                          params)
    return params, state


@pytest.mark.parametrize("convention", ["torch", "keras"])
def test_weights_round_trip_through_torch_exactly(torch, convention, record):
    model = small_bn_convnet(convention)
    params, state = non_trivial(model)
    module = parity.to_torch_module(model, (12, 12, 3), params, state)
    named = module.state_dict()
    conv = params["conv2d_0"]["kernel"]
    # OIHW in PyTorch, HWIO in fnlearn.
    assert tuple(named["0.weight"].shape) == (4, 3, 3, 3)
    np.testing.assert_array_equal(named["0.weight"].numpy(), np.transpose(conv, (3, 2, 0, 1)))
    for torch_name, ours in [("weight", params["batch_norm_0"]["gamma"]),
                             ("bias", params["batch_norm_0"]["beta"]),
                             ("running_mean", state["batch_norm_0"]["mean"]),
                             ("running_var", state["batch_norm_0"]["var"])]:
        np.testing.assert_array_equal(named[f"2.{torch_name}"].numpy(), np.asarray(ours))
    back_params, back_state = parity.variables_from_torch(module, model=model,
                                                          input_shape=(12, 12, 3))
    compared = parity.assert_close_trees(back_params, params, rtol=0.0)
    compared += parity.assert_close_trees(back_state, state, rtol=0.0)
    record("worst abs error over params and state", max(c.max_abs_error for c in compared))
    assert len(compared) == 10 and max(c.max_abs_error for c in compared) == 0.0


@pytest.mark.parametrize("convention", ["torch", "keras"])
def test_weights_round_trip_through_keras_exactly(keras, convention, record):
    model = small_bn_convnet(convention)
    params, state = non_trivial(model)
    keras_model = parity.to_keras_model(model, (12, 12, 3), params, state)
    conv = next(layer for layer in keras_model.layers if type(layer).__name__ == "Conv2D")
    np.testing.assert_array_equal(conv.get_weights()[0], params["conv2d_0"]["kernel"])  # HWIO
    bn = next(layer for layer in keras_model.layers
              if type(layer).__name__ == "BatchNormalization")
    by_name = {v.path.rsplit("/", 1)[1]: v.numpy() for v in bn.weights}
    for keras_name, ours in [("gamma", params["batch_norm_0"]["gamma"]),
                             ("beta", params["batch_norm_0"]["beta"]),
                             ("moving_mean", state["batch_norm_0"]["mean"]),
                             ("moving_variance", state["batch_norm_0"]["var"])]:
        np.testing.assert_array_equal(by_name[keras_name], np.asarray(ours))
    back_params, back_state = parity.variables_from_keras(keras_model, model=model,
                                                          input_shape=(12, 12, 3))
    compared = parity.assert_close_trees(back_params, params, rtol=0.0)
    compared += parity.assert_close_trees(back_state, state, rtol=0.0)
    record("worst abs error over params and state", max(c.max_abs_error for c in compared))
    assert len(compared) == 10 and max(c.max_abs_error for c in compared) == 0.0


# --- 2. the classic porting bug: fc1 after a flatten ----------------------------------------


@pytest.fixture(scope="module")
def net_setup(torch, torch_net, mnist_images):
    model = models.torch_mnist_net()
    params = nn.init(model, 0, IMAGE)
    x = mnist_images[0][:16]
    normalized = nn.serial(nn.Normalize(0.0, 255.0), nn.Normalize(0.1307, 0.3081)).apply(
        {}, jnp.asarray(x))
    net = torch_net().eval()
    return model, params, x, torch.from_numpy(nchw(np.asarray(normalized))), net


def test_fnlearn_weights_in_the_net_class(torch, net_setup, record):
    model, params, x, normalized, net = net_setup
    net.load_state_dict(parity.variables_to_torch(params, net, model=model, input_shape=IMAGE))
    with torch.no_grad():
        expected = net(normalized)
    result = parity.compare("log-probabilities", model.apply(params, jnp.asarray(x)), expected,
                            rtol=FORWARD_RTOL)
    record("forward", f"max rel error {result.max_rel_error:.1e}")
    assert result.passed, str(result)


def test_fc1_without_the_flatten_permutation_is_caught(torch, net_setup, record):
    model, params, x, normalized, net = net_setup
    state = parity.variables_to_torch(params, net, model=model, input_shape=IMAGE)
    # The port everybody writes first: fc1.weight = kernel.T, as for any Linear.
    state["fc1.weight"] = torch.from_numpy(np.ascontiguousarray(
        np.asarray(params["dense_0"]["kernel"]).T))
    net.load_state_dict(state)
    with torch.no_grad():
        expected = net(normalized)
    result = parity.compare("log-probabilities", model.apply(params, jnp.asarray(x)), expected,
                            rtol=FORWARD_RTOL)
    record("forward with a plain transpose", f"max abs error {result.max_abs_error:.2g}")
    assert not result.passed and result.max_abs_error > 1e-2


# --- 3. forward and gradients, both models, both frameworks ----------------------------------


def fnlearn_grads(model, params, x, y, recipe):
    loss = fnlearn_loss(recipe)
    return jax.grad(lambda p: jnp.mean(loss(jnp.asarray(y), model.apply(p, jnp.asarray(x)))))(
        params)


def check_grads(record, ours, theirs, context):
    assert {k: sorted(v) for k, v in ours.items()} == {k: sorted(v) for k, v in theirs.items()}
    worst, used = (0.0, ""), 0.0
    for name, leaves in theirs.items():
        for leaf, expected in leaves.items():
            scale = float(np.max(np.abs(np.asarray(expected))))
            result = parity.compare(f"{context} {name}/{leaf}", ours[name][leaf], expected,
                                    rtol=GRAD_RTOL, atol=GRAD_ATOL_FRACTION * scale)
            assert result.passed, str(result)
            worst = max(worst, (result.max_abs_error / scale, f"{name}/{leaf}: max abs error "
                                f"{result.max_abs_error:.1e}, largest |grad| {scale:.1e}"))
            used = max(used, allowance_used(result))
    record("gradients, worst abs error / largest |grad|", f"{worst[0]:.1e} ({worst[1]})")
    record("gradients, largest share of the allowance used", f"{used:.2f}")


def allowance_used(result) -> float:
    """|error| / (atol + rtol * |expected|) at the worst element: what the check compares to 1."""
    allowed = result.atol + result.rtol * abs(result.expected_at_worst)
    error = abs(result.actual_at_worst - result.expected_at_worst)
    return error / allowed if allowed else float(error > 0)


@pytest.fixture(scope="module")
def grad_batch(mnist_images):
    return mnist_images[0][16:32], mnist_images[1][16:32]


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_forward_and_gradients_vs_torch(torch, recipe, grad_batch, record):
    model, (x, y) = RECIPES[recipe](), grad_batch
    params = nn.init(model, 1, IMAGE)
    module = parity.to_torch_module(model, IMAGE, params).eval()
    inputs = torch.from_numpy(nchw(x))
    out = module(inputs)
    forward = parity.compare("outputs", model.apply(params, jnp.asarray(x)), out,
                             rtol=FORWARD_RTOL)
    record("forward", f"max rel error {forward.max_rel_error:.1e}")
    assert forward.passed, str(forward)
    if recipe == "keras_convnet":
        probabilities = out.detach().numpy()
        assert 1e-7 < probabilities.min() and probabilities.max() < 1 - 1e-7, "clip would bite"
    torch_loss(torch, recipe)(out, torch.from_numpy(y)).backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    theirs, _ = parity.variables_from_torch(grads, model=model, input_shape=IMAGE)
    check_grads(record, fnlearn_grads(model, params, x, y, recipe), theirs, f"{recipe} vs torch")


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_forward_and_gradients_vs_keras(tf, keras, recipe, grad_batch, record):
    model, (x, y) = RECIPES[recipe](), grad_batch
    params = nn.init(model, 1, IMAGE)
    keras_model = parity.to_keras_model(model, IMAGE, params)
    inputs = x.astype(np.float32)
    with tf.GradientTape() as tape:
        out = keras_model(inputs, training=False)
        value = tf.reduce_mean(keras_loss(tf, keras, recipe)(y, out))
    forward = parity.compare("outputs", model.apply(params, jnp.asarray(x)), out,
                             rtol=FORWARD_RTOL)
    record("forward", f"max rel error {forward.max_rel_error:.1e}")
    assert forward.passed, str(forward)
    grads = tape.gradient(value, keras_model.trainable_variables)
    # Read the gradients back as weights of a twin: Keras's layout, converted like weights.
    twin = parity.to_keras_model(model, IMAGE, params)
    for variable, grad in zip(twin.trainable_variables, grads, strict=True):
        variable.assign(grad)
    theirs, _ = parity.variables_from_keras(twin, model=model, input_shape=IMAGE)
    check_grads(record, fnlearn_grads(model, params, x, y, recipe), theirs, f"{recipe} vs Keras")


# --- 5. BatchNorm running statistics after 20 training steps --------------------------------

BN_STEPS = 20
# Running mean and variance, per element (rel + abs; running means sit near zero): float32
# batch statistics differ in their last bits, and the weights drift by rounding over the
# steps. Keras's training-mode normalization is itself less accurate (measured below).
BN_TOLERANCE = {"torch": {"rtol": 1e-4, "atol": 1e-6}, "keras": {"rtol": 1e-3, "atol": 3e-4}}


def bn_convnet(convention: str) -> nn.Layer:
    return nn.serial(nn.Normalize(0.0, 255.0), nn.Conv2D(8, 3),
                     nn.BatchNorm(convention=convention), nn.ReLU(), nn.MaxPool2D(2),
                     nn.Conv2D(8, 3), nn.BatchNorm(convention=convention), nn.ReLU(),
                     nn.MaxPool2D(2), nn.Flatten(), nn.Dense(10))


def fnlearn_bn_run(model, data, lr):
    x, y = data
    optimizer = optim.torch_sgd(lr)
    state = fnlearn.init_state(model, optimizer, IMAGE, seed=4)
    initial = (state.params, state.model_state)
    loss = functools.partial(losses.sparse_categorical_crossentropy, from_logits=True)
    step = jax.jit(functools.partial(fnlearn.train_step, model=model, loss=loss,
                                     optimizer=optimizer))
    for i in range(BN_STEPS):
        batch = slice(i * BATCH, (i + 1) * BATCH)
        state, _ = step(state, jnp.asarray(x[batch]), jnp.asarray(y[batch]))
    return initial, state.model_state


def check_running_stats(record, ours, theirs, initial, rtol, atol):
    for name in theirs:
        moved = float(np.max(np.abs(np.asarray(theirs[name]["var"]) -
                                    np.asarray(initial[name]["var"]))))
        assert moved > 1e-2, f"{name}'s running variance barely moved ({moved:.2g})"
    compared = parity.assert_close_trees(ours, theirs, rtol=rtol, atol=atol,
                                         context=f"after {BN_STEPS} steps")
    worst = max(compared, key=lambda c: c.max_abs_error)
    record("running statistics", f"max abs error {worst.max_abs_error:.1e} ({worst.name}), "
           f"max rel error {max(c.max_rel_error for c in compared):.1e}")


def test_batch_norm_running_statistics_vs_torch(torch, steps_data, record):
    model, (x, y) = bn_convnet("torch"), steps_data
    (params, state), ours = fnlearn_bn_run(model, steps_data, 0.05)
    module = parity.to_torch_module(model, IMAGE, params, state).train()
    assert module[2].momentum == pytest.approx(0.1)  # torch convention, PyTorch's default
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    for i in range(BN_STEPS):
        batch = slice(i * BATCH, (i + 1) * BATCH)
        loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(nchw(x[batch]))),
                                                 torch.from_numpy(y[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _, theirs = parity.variables_from_torch(module, model=model, input_shape=IMAGE)
    check_running_stats(record, ours, theirs, state, **BN_TOLERANCE["torch"])


def test_batch_norm_running_statistics_vs_keras(keras, steps_data, record):
    model, (x, y) = bn_convnet("keras"), steps_data
    (params, state), ours = fnlearn_bn_run(model, steps_data, 0.05)
    keras_model = parity.to_keras_model(model, IMAGE, params, state)
    bn = [layer for layer in keras_model.layers if type(layer).__name__ == "BatchNormalization"]
    assert [layer.momentum for layer in bn] == [0.99, 0.99]  # keras convention, its default
    keras_model.compile(optimizer=keras.optimizers.SGD(0.05),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for i in range(BN_STEPS):
        batch = slice(i * BATCH, (i + 1) * BATCH)
        keras_model.train_on_batch(x[batch].astype(np.float32), y[batch])
    _, theirs = parity.variables_from_keras(keras_model, model=model, input_shape=IMAGE)
    check_running_stats(record, ours, theirs, state, **BN_TOLERANCE["keras"])


def test_keras_training_batch_norm_is_the_less_accurate(keras, mnist_images, record):
    # Why the Keras tolerance is wider: on a float32 batch, Keras's training-mode
    # BatchNormalization (TensorFlow kernels) is further from a float64 computation than
    # fnlearn's, so the two runs drift apart through the normalized activations.
    conv = nn.serial(nn.Normalize(0.0, 255.0), nn.Conv2D(4, 3))
    x = np.asarray(conv.apply(nn.init(conv, 0, IMAGE), jnp.asarray(mnist_images[0][:8])))
    exact = x.astype(np.float64)
    exact = (exact - exact.mean(axis=(0, 1, 2))) / np.sqrt(exact.var(axis=(0, 1, 2)) + 1e-3)
    layer = nn.BatchNorm()
    _, params, state = nn.init_with_state(layer, 0, x.shape[1:])
    ours, _ = nn.apply(layer, params, jnp.asarray(x), state=state, train=True)
    theirs = keras.layers.BatchNormalization()(x, training=True)
    our_error = parity.compare("fnlearn", ours, exact, rtol=0.0).max_abs_error
    their_error = parity.compare("Keras", theirs, exact, rtol=0.0).max_abs_error
    record("max abs error vs float64", f"fnlearn {our_error:.1e}, Keras {their_error:.1e}")
    assert our_error < 1e-6 and their_error > 10 * our_error

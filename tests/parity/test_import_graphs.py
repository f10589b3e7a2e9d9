"""Importing graphs: residual adds, concatenations, shared layers, several inputs and outputs.

torchvision's ResNet-18 and Keras's ResNet50 are imported as they are defined; each
report holds the forward pass to 1e-5 of the largest output, and ResNet-18's
gradients are held to the suite's tolerance before it trains in fnlearn.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnlearn
from fnlearn import losses, nn, optim, parity

pytestmark = pytest.mark.parity

RTOL = 1e-5
GRAD_ATOL_FRACTION = 1e-6  # of the tensor's largest |gradient|, as in test_import.py


def forward_rel(record, what, ours, expected):
    """Max abs error over the largest |output|: the report's measure, recorded and checked."""
    expected = np.asarray(expected)
    result = parity.compare(what, np.asarray(ours), expected, rtol=RTOL,
                            atol=RTOL * float(np.abs(expected).max()))
    rel = result.max_abs_error / float(np.abs(expected).max())
    record(f"{what}: max abs error / largest |output|", f"{rel:.1e}")
    assert result.passed and rel <= RTOL, str(result)


def check_grads(record, ours, theirs):
    """Every gradient within rel 1e-5 + 1e-6 of its tensor's largest |gradient|."""
    mine = dict(jax.tree_util.tree_leaves_with_path(ours))
    reference = dict(jax.tree_util.tree_leaves_with_path(theirs))
    assert set(mine) == set(reference)
    worst, used = 0.0, 0.0
    for path, expected in reference.items():
        expected = np.asarray(expected)
        scale = float(np.abs(expected).max()) or 1.0
        result = parity.compare(jax.tree_util.keystr(path), mine[path], expected, rtol=RTOL,
                                atol=GRAD_ATOL_FRACTION * scale)
        assert result.passed, str(result)
        worst = max(worst, result.max_abs_error / scale)
        allowed = result.atol + result.rtol * abs(result.expected_at_worst)
        used = max(used, abs(result.actual_at_worst - result.expected_at_worst) / allowed)
    record("gradients, worst abs error / largest |grad|", f"{worst:.1e}")
    record("gradients, largest share of the allowance used", f"{used:.2f}")


def as_if_trained(torch, module):
    """Running statistics away from 0 and 1, so a lost or misplaced state would show."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


def nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def crossentropy(labels, logits):
    return losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def test_import_torchvision_resnet18(torch, torchvision, record):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    as_if_trained(torch, net)
    imported = parity.from_torch(net, (3, 32, 32))
    record("report", str(imported.report))
    assert imported.report.passed
    model = imported.model
    assert model.kind == "model"  # a graph: the residual adds
    assert "layer2.0.downsample.0" in imported.params  # named after torchvision's modules
    assert imported.model_state["layer4.1.bn2"]["var"].shape == (512,)
    # The ReLU module of each block is called twice: one layer, called twice.
    assert len([s for s in model.config["graph"].steps if s.label.startswith("layer1.0.relu")]) == 2

    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    # Gradients of 4 examples: 18 layers of float32 sums leave the worst element at 0.71
    # of the allowance here, and at 0.95 to 1.05 of it with 8 or 16 examples (measured):
    # rounding whose sign depends on the batch, not a wrong gradient (each tensor's error
    # is ~1e-6 of its largest entry).
    few_x, few_y = x[:4], y[:4]
    net.eval()
    net.zero_grad()
    logits = net(torch.from_numpy(nchw(few_x)))
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(few_y)).backward()
    forward_rel(record, "logits", jax.jit(lambda p, s, v: nn.apply(model, p, v, state=s)[0])(
        imported.params, imported.model_state, few_x), logits.detach())

    grads = {name: p.grad for name, p in net.named_parameters()}
    theirs = parity.variables_from_torch({**net.state_dict(), **grads}, model=model,
                                         input_shape=(32, 32, 3))[0]

    def mean_loss(params):
        out, _ = nn.apply(model, params, jnp.asarray(few_x), state=imported.model_state)
        return jnp.mean(crossentropy(jnp.asarray(few_y), out))

    check_grads(record, jax.jit(jax.grad(mean_loss))(imported.params), theirs)
    # The weights go back by name, bit for bit.
    back = parity.variables_to_torch(imported.params, net, model=model, input_shape=(32, 32, 3),
                                     model_state=imported.model_state)
    for key, value in net.state_dict().items():
        assert torch.equal(back[key], value), key

    _, history = fnlearn.fit(model, x, y, loss=crossentropy, optimizer=optim.torch_adam(),
                             epochs=5, batch_size=None, shuffle=False,
                             initial_params=imported.params,
                             initial_model_state=imported.model_state, verbose=0)
    loss = history.history["loss"]
    record("fit, 5 full-batch steps", f"loss {loss[0]:.3f} -> {loss[-1]:.3f}")
    assert loss[-1] < 0.7 * loss[0]


def branching_module(torch):
    nn_, F = torch.nn, torch.nn.functional

    class Branching(nn_.Module):
        """Two inputs, a residual add, a concatenation, a product, a module called twice,
        two flattens (one into a Linear) and a dict of two outputs."""

        def __init__(self):
            super().__init__()
            self.stem = nn_.Conv2d(2, 8, 3, padding=1, bias=False)
            self.bn = nn_.BatchNorm2d(8)
            self.conv = nn_.Conv2d(8, 8, 3, padding=1)
            self.left, self.right = nn_.Conv2d(8, 4, 1), nn_.Conv2d(8, 4, 3, padding=1)
            self.fc = nn_.Linear(8 * 4 * 4, 8)
            self.shared = nn_.Linear(8, 8)
            self.head = nn_.Linear(16, 3)

        def forward(self, image, extra):
            h = F.relu(self.bn(self.stem(image)))
            h = F.relu(h + self.conv(h))
            h = torch.cat([self.left(h), self.right(h)], dim=1)
            h = F.max_pool2d(h * torch.sigmoid(h), 2)
            pooled = self.fc(h.view(h.size(0), -1))
            e = self.shared(F.relu(self.shared(extra)))
            return {"label": self.head(torch.cat([pooled, e], 1)), "map": torch.flatten(h, 1)}

    return Branching()


def test_import_a_torch_graph_with_every_kind_of_branch(torch, record):
    torch.manual_seed(0)
    module = branching_module(torch)
    as_if_trained(torch, module)
    imported = parity.from_torch(module, {"image": (2, 8, 8), "extra": (8,)})
    record("report", str(imported.report))
    assert imported.report.passed
    assert list(imported.params).count("shared") == 1
    steps = [s.label for s in imported.model.config["graph"].steps]
    assert "shared (call 2)" in steps
    rng = np.random.default_rng(2)
    x = {"image": rng.normal(size=(4, 8, 8, 2)).astype(np.float32),
         "extra": rng.normal(size=(4, 8)).astype(np.float32)}
    out = fnlearn.predict(imported.model, imported.params, x, model_state=imported.model_state)
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(nchw(x["image"])), torch.from_numpy(x["extra"]))
    assert set(out) == {"label", "map"}
    forward_rel(record, "label", out["label"], expected["label"])
    # A flatten with no Linear after it keeps PyTorch's (C, H, W) order.
    forward_rel(record, "map", out["map"], expected["map"])


def keras_resnet_block_model(keras):
    """A functional model: two residual blocks (one with a strided projection), a shared
    Dense, a concatenation, two inputs and two named outputs."""
    layers = keras.layers
    image, extra = keras.Input((16, 16, 3), name="image"), keras.Input((4,), name="extra")

    def conv_bn(x, filters, kernel, strides=1, relu=True, name=None):
        x = layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x

    x = conv_bn(image, 8, 3, name="stem")
    y = conv_bn(conv_bn(x, 8, 3, name="block1_1"), 8, 3, relu=False, name="block1_2")
    x = layers.Activation("relu", name="block1_out")(layers.Add(name="block1_add")([y, x]))
    y = conv_bn(conv_bn(x, 16, 3, 2, name="block2_1"), 16, 3, relu=False, name="block2_2")
    shortcut = conv_bn(x, 16, 1, 2, relu=False, name="block2_0")
    x = layers.ReLU(name="block2_out")(layers.Add(name="block2_add")([y, shortcut]))
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)
    shared = layers.Dense(8, activation="relu", name="shared")
    h = layers.Concatenate(name="join")([shared(layers.Dense(8, name="from_pool")(pooled)),
                                         shared(layers.Dense(8, name="from_extra")(extra))])
    return keras.Model({"image": image, "extra": extra},
                       {"label": layers.Dense(3, activation="softmax", name="label")(h),
                        "size": layers.Dense(1, name="size")(pooled)})


def randomize_moving_statistics(keras_model):
    rng = np.random.default_rng(3)
    for layer in keras_model.layers:
        if type(layer).__name__ == "BatchNormalization":
            size = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.uniform(-0.5, 0.5, size).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, size).astype(np.float32))


def test_import_a_keras_functional_resnet_block_model(keras, record):
    keras.utils.set_random_seed(0)
    source = keras_resnet_block_model(keras)
    randomize_moving_statistics(source)
    imported = parity.from_keras(source)
    record("report", str(imported.report))
    assert imported.report.passed
    assert list(imported.params).count("shared") == 1 and "block2_0_conv" in imported.params
    rng = np.random.default_rng(4)
    x = {"image": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
         "extra": rng.normal(size=(4, 4)).astype(np.float32)}
    out = fnlearn.predict(imported.model, imported.params, x, model_state=imported.model_state)
    expected = source(x, training=False)
    for name in ("label", "size"):
        forward_rel(record, name, out[name], expected[name])
    # Weights go back by name.
    keras.utils.set_random_seed(1)
    twin = keras_resnet_block_model(keras)
    parity.variables_to_keras(imported.params, twin, model=imported.model,
                              input_shape={"image": (16, 16, 3), "extra": (4,)},
                              model_state=imported.model_state)
    np.testing.assert_array_equal(twin(x, training=False)["size"], expected["size"])


def test_import_keras_resnet50(keras, record):
    keras.utils.set_random_seed(0)
    source = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    randomize_moving_statistics(source)
    imported = parity.from_keras(source, batch_size=4)
    record("report", str(imported.report))
    assert imported.report.passed
    assert imported.model.kind == "model" and "conv5_block3_3_conv" in imported.params
    assert nn.count_params(imported.params) == sum(
        int(np.prod(w.shape)) for w in source.trainable_weights)
    x = np.random.default_rng(5).normal(size=(4, 64, 64, 3)).astype(np.float32)
    ours = jax.jit(lambda p, s, v: nn.apply(imported.model, p, v, state=s)[0])(
        imported.params, imported.model_state, x)
    forward_rel(record, "probabilities", ours, source(x, training=False))


def test_refusals_name_the_node(torch, keras):
    nn_ = torch.nn

    class Softplus(nn_.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.act = nn_.Linear(4, 4), nn_.Softplus()

        def forward(self, x):
            return x + self.act(self.linear(x))

    with pytest.raises(ValueError, match=r"unsupported operation Softplus at node 'act' "
                                         r"\(target act\); supported: .*Conv2d"):
        parity.from_torch(Softplus(), (4,))

    class PlusOne(nn_.Module):
        def forward(self, x):
            return x + 1

    with pytest.raises(ValueError, match=r"node 'add' \(target add\) combines a tensor with a "
                                         r"constant"):
        parity.from_torch(PlusOne(), (4,))

    class Slice(nn_.Module):
        def forward(self, x):
            return x[:, :2]

    with pytest.raises(ValueError, match=r"node 'getitem' .* indexes a tensor"):
        parity.from_torch(Slice(), (4,))

    image = keras.Input((4, 3))
    # A residual LSTM imports (sequence_import); a recurrent layer of a bare cell does not.
    lstm = keras.layers.LSTM(3, return_sequences=True, name="lstm")(image)
    assert parity.from_keras(keras.Model(image, keras.layers.Add()([lstm, image]))).report.passed
    cell = keras.layers.RNN(keras.layers.LSTMCell(3), return_sequences=True, name="rnn")(image)
    source = keras.Model(image, keras.layers.Add()([cell, image]))
    with pytest.raises(ValueError, match=r"unsupported layer RNN at layer 'rnn' \(RNN\); "
                                         r"supported: .*Conv2D.*Dense"):
        parity.from_keras(source)

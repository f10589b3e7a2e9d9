"""Importing live PyTorch and Keras models: one call, the weights, and a report that can fail."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnlearn
from fnlearn import losses, nn, optim, parity

pytestmark = pytest.mark.parity

RTOL = 1e-5
# Gradients, per element: rel 1e-5 plus 1e-6 of the tensor's largest |gradient|, as in
# convnet_recipes (the worst element uses 0.62 of that allowance, for the Net class).
GRAD_ATOL_FRACTION = 1e-6


def nchw(x):
    return np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def batch(mnist_images):
    x, y = mnist_images
    return x[:16], y[:16]


def article_mlp(torch):
    nn_ = torch.nn
    return nn_.Sequential(nn_.Flatten(), nn_.Linear(784, 128), nn_.ReLU(), nn_.Dropout(0.2),
                          nn_.Linear(128, 10))


def simple_mnist_convnet(keras):
    layers = keras.layers
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])


def check_grads(record, ours, theirs):
    assert {k: sorted(v) for k, v in ours.items()} == {k: sorted(v) for k, v in theirs.items()}
    worst, used = 0.0, 0.0
    for name, leaves in theirs.items():
        for leaf, expected in leaves.items():
            scale = float(np.max(np.abs(np.asarray(expected))))
            result = parity.compare(f"{name}/{leaf}", ours[name][leaf], expected, rtol=RTOL,
                                    atol=GRAD_ATOL_FRACTION * scale)
            assert result.passed, str(result)
            worst = max(worst, result.max_abs_error / scale)
            allowed = result.atol + result.rtol * abs(result.expected_at_worst)
            used = max(used, abs(result.actual_at_worst - result.expected_at_worst) / allowed)
    record("gradients, worst abs error / largest |grad|", f"{worst:.1e}")
    record("gradients, largest share of the allowance used", f"{used:.2f}")


def torch_gradients(torch, module, model, input_shape, x, y, loss):
    module.eval()
    module.zero_grad()
    loss(module(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    return parity.variables_from_torch(grads, model=model, input_shape=input_shape)[0]


def fnlearn_gradients(imported, x, y, loss):
    def mean_loss(params):
        out, _ = nn.apply(imported.model, params, jnp.asarray(x), state=imported.model_state)
        return jnp.mean(loss(jnp.asarray(y), out))
    return jax.grad(mean_loss)(imported.params)


def trains(imported, x, y, loss, optimizer, input_shape):
    """Loss of the first and the last of a few full-batch steps of ``fl.fit``."""
    _, history = fnlearn.fit(imported.model, x, y, loss=loss, optimizer=optimizer, epochs=10,
                             batch_size=None, shuffle=False, initial_params=imported.params,
                             initial_model_state=imported.model_state or None, verbose=0)
    return history.history["loss"][0], history.history["loss"][-1]


def test_import_the_net_class(torch, torch_net, batch, record):
    torch.manual_seed(0)
    net = torch_net()
    imported = parity.from_torch(net, (1, 28, 28))
    record("report", str(imported.report))
    assert imported.report.passed and imported.report.max_abs_error < 1e-5
    assert [layer.kind for layer in imported.model.children] == [
        "conv2d", "relu", "conv2d", "relu", "max_pool2d", "dropout", "flatten", "dense",
        "relu", "dropout", "dense", "log_softmax"]
    assert net.training, "the import must leave the module's mode as it was"
    # Net takes normalized NCHW images; the imported model the same values, NHWC.
    x = ((batch[0] / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    y = batch[1]
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(nchw(x)))
    forward = parity.compare("log-probabilities", imported.model.apply(imported.params, x),
                             expected, rtol=RTOL)
    record("forward on MNIST", f"max rel error {forward.max_rel_error:.1e}")
    assert forward.passed, str(forward)
    theirs = torch_gradients(torch, net, imported.model, (28, 28, 1), nchw(x), y,
                             torch.nn.functional.nll_loss)
    check_grads(record, fnlearn_gradients(imported, x, y, losses.nll_loss), theirs)
    first, last = trains(imported, x, y, losses.nll_loss, optim.torch_adadelta(1.0),
                         (28, 28, 1))
    record("fit, 10 full-batch steps", f"loss {first:.3f} -> {last:.3f}")
    assert last < 0.9 * first


def test_import_the_article_mlp(torch, batch, record):
    torch.manual_seed(0)
    mlp = article_mlp(torch)
    imported = parity.from_torch(mlp, (28, 28))
    record("report", str(imported.report))
    assert imported.report.passed
    x, y = (batch[0][..., 0] / 255.0).astype(np.float32), batch[1]
    with torch.no_grad():
        expected = mlp.eval()(torch.from_numpy(x))
    forward = parity.compare("logits", imported.model.apply(imported.params, x), expected,
                             rtol=RTOL, atol=RTOL * float(expected.abs().max()))
    record("forward on MNIST", f"max abs error {forward.max_abs_error:.1e}")
    assert forward.passed, str(forward)

    def crossentropy(labels, logits):
        return losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    theirs = torch_gradients(torch, mlp, imported.model, (28, 28), x, y,
                             torch.nn.functional.cross_entropy)
    check_grads(record, fnlearn_gradients(imported, x, y, crossentropy), theirs)
    first, last = trains(imported, x, y, crossentropy, optim.torch_adam(), (28, 28))
    record("fit, 10 full-batch steps", f"loss {first:.3f} -> {last:.3f}")
    assert last < 0.9 * first


def test_import_the_simple_mnist_convnet(tf, keras, batch, record):
    keras.utils.set_random_seed(0)
    convnet = simple_mnist_convnet(keras)
    imported = parity.from_keras(convnet)
    record("report", str(imported.report))
    assert imported.report.passed
    x = (batch[0] / 255.0).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[batch[1]]
    with tf.GradientTape() as tape:
        out = convnet(x, training=False)
        value = keras.losses.CategoricalCrossentropy()(y, out)
    forward = parity.compare("probabilities", imported.model.apply(imported.params, x), out,
                             rtol=RTOL)
    record("forward on MNIST", f"max rel error {forward.max_rel_error:.1e}")
    assert forward.passed, str(forward)
    assert 1e-7 < float(tf.reduce_min(out)) and float(tf.reduce_max(out)) < 1 - 1e-7
    grads = tape.gradient(value, convnet.trainable_variables)
    twin = parity.to_keras_model(imported.model, (28, 28, 1), imported.params)
    for variable, grad in zip(twin.trainable_variables, grads, strict=True):
        variable.assign(grad)
    theirs, _ = parity.variables_from_keras(twin, model=imported.model, input_shape=(28, 28, 1))
    check_grads(record, fnlearn_gradients(imported, x, y, losses.categorical_crossentropy),
                theirs)
    first, last = trains(imported, x, y, losses.categorical_crossentropy, optim.keras_adam(),
                         (28, 28, 1))
    record("fit, 10 full-batch steps", f"loss {first:.3f} -> {last:.3f}")
    assert last < 0.9 * first


def test_import_batch_norm_and_average_pooling(torch, record):
    nn_ = torch.nn
    torch.manual_seed(0)
    module = nn_.Sequential(nn_.Conv2d(1, 4, 3, padding=1), nn_.BatchNorm2d(4), nn_.ReLU(),
                            nn_.AvgPool2d(2), nn_.ZeroPad2d((1, 0, 2, 1)), nn_.Conv2d(4, 8, 3),
                            nn_.BatchNorm2d(8, momentum=0.2), nn_.ReLU(),
                            nn_.AdaptiveAvgPool2d(1), nn_.Flatten(), nn_.Linear(8, 3))
    with torch.no_grad():  # statistics as if trained, so a lost state would show
        for bn in (module[1], module[6]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    imported = parity.from_torch(module, (1, 12, 12))
    record("report", str(imported.report))
    assert imported.report.passed
    assert [layer.kind for layer in imported.model.children] == [
        "conv2d", "batch_norm", "relu", "avg_pool2d", "conv2d", "batch_norm", "relu",
        "global_avg_pool2d", "dense"]  # PyTorch's AdaptiveAvgPool2d(1) + Flatten is one layer
    bn = imported.model.children[5].config
    assert bn["convention"] == "torch" and bn["momentum"] == 0.2
    np.testing.assert_array_equal(imported.model_state["batch_norm_0"]["var"],
                                  module[1].running_var.numpy())


def test_import_keras_padding_and_batch_norm(keras, record):
    layers = keras.layers
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((12, 12, 2)), layers.ZeroPadding2D(((1, 0), (2, 1))),
                              layers.Conv2D(4, 3), layers.BatchNormalization(momentum=0.9),
                              layers.ReLU(), layers.GlobalAveragePooling2D(), layers.Dense(3)])
    bn = model.layers[2]
    bn.moving_mean.assign(np.linspace(-1, 1, 4).astype(np.float32))
    bn.moving_variance.assign(np.linspace(0.5, 2, 4).astype(np.float32))
    imported = parity.from_keras(model)
    record("report", str(imported.report))
    assert imported.report.passed
    conv, norm = imported.model.children[0].config, imported.model.children[1].config
    assert conv["padding"] == ((1, 0), (2, 1))
    assert norm["convention"] == "keras" and norm["momentum"] == 0.9
    # Named as the Keras layer is.
    np.testing.assert_array_equal(imported.model_state[bn.name]["var"],
                                  bn.moving_variance.numpy())


def test_import_refuses_unsupported_operations(torch, keras):
    nn_ = torch.nn
    with pytest.raises(ValueError, match=r"unsupported operation Softplus at node '_2' "
                                         r"\(target 2\); supported: .*Conv2d.*Linear"):
        parity.from_torch(nn_.Sequential(nn_.Flatten(), nn_.Linear(4, 4), nn_.Softplus()), (4,))

    # A padding not right before a convolution is a ZeroPadding2D of its own.
    padded = parity.from_torch(nn_.Sequential(nn_.ZeroPad2d(1), nn_.ReLU(), nn_.Conv2d(1, 2, 3)),
                               (1, 6, 6))
    assert padded.model.children[0].kind == "zero_padding2d" and padded.report.passed
    # nn.LSTM and keras.layers.LSTM import (sequence_import); a bare cell does not.
    with pytest.raises(ValueError, match=r"unsupported operation LSTMCell at node"):
        parity.from_torch(nn_.Sequential(nn_.LSTMCell(4, 4)), (4,))
    cell = keras.Sequential([keras.Input((3, 4)), keras.layers.RNN(keras.layers.LSTMCell(4))])
    with pytest.raises(ValueError, match=r"unsupported layer RNN at layer 'rnn.*' \(RNN\); "
                                         r"supported: .*Conv2D.*Dense"):
        parity.from_keras(cell)


def corrupting(entry, which: str):
    """``entry`` whose ``from_<which>`` converter adds 0.5 to one output's kernel column.

    A whole column, not one weight: a single input feature can be zero (a dead ReLU) for
    every example of the report's batch, and then no weight of its row shows.
    """

    def corrupted(*args, **kwargs):
        params, state = getattr(entry, f"from_{which}")(*args, **kwargs)
        kernel = np.array(params["kernel"])
        kernel[:, 3] += 0.5  # as a wrong copy would leave it
        return {**params, "kernel": kernel}, state

    return entry._replace(**{f"from_{which}": corrupted})


def test_the_report_catches_a_corrupted_weight(torch, torch_net, keras, monkeypatch, record):
    torch.manual_seed(0)
    net = torch_net()
    assert parity.from_torch(net, (1, 28, 28)).report.passed
    keras.utils.set_random_seed(0)
    convnet = simple_mnist_convnet(keras)
    assert parity.from_keras(convnet).report.passed
    # Before: the import returned a report saying MISMATCH and nothing else happened.
    monkeypatch.setitem(parity.REGISTRY, "dense",
                        corrupting(parity.REGISTRY["dense"], "torch"))
    with pytest.raises(parity.ImportMismatchError, match=r"the import does not compute what "
                                                         r"its source computes: Net -> fnlearn, "
                                                         r".*MISMATCH.*pass strict=False") as error:
        parity.from_torch(net, (1, 28, 28))
    record("corrupted fc1 column, torch", f"{error.value.imported.report.max_abs_error:.1e}")
    assert error.value.imported.report.max_abs_error > 1e-3
    with pytest.warns(UserWarning, match="MISMATCH"):
        imported = parity.from_torch(net, (1, 28, 28), strict=False)
    assert not imported.report.passed

    monkeypatch.setitem(parity.REGISTRY, "dense",
                        corrupting(parity.REGISTRY["dense"], "keras"))
    with pytest.raises(parity.ImportMismatchError, match=r"MISMATCH"):
        parity.from_keras(convnet)


def test_a_flatten_without_a_linear_after_it_keeps_pytorch_order(torch, record):
    torch.manual_seed(0)
    nn_ = torch.nn
    # Before: imported with a report saying MISMATCH (max abs 2.66): fnlearn flattened
    # (H, W, C) and no Linear followed to absorb the order.
    module = nn_.Sequential(nn_.Conv2d(5, 3, 3), nn_.Flatten())
    imported = parity.from_torch(module, (5, 8, 8))
    record("Conv2d + Flatten", str(imported.report))
    assert imported.report.passed
    assert imported.model.children[-1].config == {"channels_first": True}
    then_softmax = parity.from_torch(nn_.Sequential(nn_.Conv2d(5, 3, 3), nn_.ReLU(),
                                                    nn_.Flatten(), nn_.Softmax(-1)), (5, 8, 8))
    assert then_softmax.report.passed
    # A Linear after the Flatten still takes the order in its permuted rows.
    linear = parity.from_torch(nn_.Sequential(nn_.Conv2d(5, 3, 3), nn_.Flatten(), nn_.ReLU(),
                                              nn_.Linear(108, 4)), (5, 8, 8))
    assert linear.report.passed and linear.model.children[1].config == {}


def test_port_experiment_trains_in_torch_then_in_fnlearn(torch, tmp_path, capsys):
    from experiments import port

    source = ["--data-dir", os.environ["FNLEARN_DATA_DIR"]] if os.environ.get(
        "FNLEARN_DATA_DIR") else ["--source", "sample"]
    results = port.main(["--limit", "512", "--test-limit", "500", "--out", str(tmp_path),
                         *source])
    out = capsys.readouterr().out
    assert "Imported: Net -> fnlearn" in out and results["report_passed"]
    # The imported model predicts what the PyTorch model predicts (a tie may flip one image).
    assert abs(results["imported_test_accuracy"] - results["torch_test_accuracy"]) <= 1 / 500
    assert results["fnlearn_test_accuracy"] > 0.3  # chance is 0.1
    assert (tmp_path / "report.json").exists()

"""Reference-model building and weight conversion with the real frameworks."""

import numpy as np
import pytest

from fnlearn import nn, parity

pytestmark = pytest.mark.parity


def mnist_model():
    return nn.serial(nn.Flatten(), nn.Dense(128, "relu"), nn.Dropout(0.2),
                     nn.Dense(10, "softmax"))


def test_torch_module_layout_and_round_trip(torch):
    params = nn.init(mnist_model(), 0, (28, 28))
    module = parity.to_torch_module(mnist_model(), (28, 28), params)
    assert [type(m).__name__ for m in module] == [
        "Flatten", "Linear", "ReLU", "Dropout", "Linear", "Softmax"]
    assert tuple(module[1].weight.shape) == (128, 784)  # (out, in): the kernel transposed
    assert module[3].p == 0.2
    parity.assert_close_trees(parity.params_from_torch(module, params), params, rtol=0)


def test_keras_model_layout_and_round_trip(keras):
    params = nn.init(mnist_model(), 0, (28, 28))
    keras_model = parity.to_keras_model(mnist_model(), (28, 28), params)
    assert [type(layer).__name__ for layer in keras_model.layers] == [
        "Flatten", "Dense", "Dropout", "Dense"]
    assert keras_model.layers[1].get_weights()[0].shape == (784, 128)  # (in, out) as is
    assert keras_model.layers[3].activation.__name__ == "softmax"
    parity.assert_close_trees(parity.params_from_keras(keras_model, params), params, rtol=0)


def test_unsupported_torch_operation_is_named_with_its_node(torch):
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4), torch.nn.Softplus())
    with pytest.raises(ValueError, match=r"unsupported operation Softplus at node '_2' "
                                         r"\(target 2\); "
                                         r"supported: .*Conv2d.*Linear"):
        parity.params_from_torch(module, model=nn.serial(nn.Flatten(), nn.Dense(4)),
                                 input_shape=(4,))


def test_torch_linear_without_bias_does_not_fit_a_dense_with_bias(torch):
    module = torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False))
    with pytest.raises(ValueError, match=r"weights \['kernel'\] do not match fnlearn's "
                                         r"\['bias', 'kernel'\]"):
        parity.params_from_torch(module, like={"dense_0": {"kernel": np.zeros((4, 2)),
                                                           "bias": np.zeros(2)}})
    linear = nn.serial(nn.Linear(4, 2, bias=False))
    params = parity.params_from_torch(module, model=linear, input_shape=(4,))
    np.testing.assert_array_equal(params["dense_0"]["kernel"], module[0].weight.detach().T)


def test_a_port_that_lost_an_activation_is_refused_naming_both_sides(torch, keras):
    source = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    ported = nn.serial(nn.Dense(8), nn.Dense(2))
    with pytest.raises(ValueError, match=r"layer kinds differ: fnlearn layer 'dense_1' \(dense\) "
                                         r"is linear, but the PyTorch model has tanh at node "
                                         r"'_1' \(target 1\)"):
        parity.params_from_torch(source, model=ported, input_shape=(4,))
    right = nn.serial(nn.Dense(8, "tanh"), nn.Dense(2))
    params = parity.params_from_torch(source, model=right, input_shape=(4,))
    assert params["dense_0"]["kernel"].shape == (4, 8)
    keras_source = parity.to_keras_model(right, (4,), nn.init(right, 0, (4,)))
    with pytest.raises(ValueError, match="layer kinds differ: fnlearn layer 'dense_1' .* is "
                                         "linear, but the Keras model has tanh at layer 0"):
        parity.params_from_keras(keras_source, model=ported, input_shape=(4,))


def test_branching_torch_graphs_are_refused(torch):
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x):
            return x + self.linear(x)

    with pytest.raises(ValueError, match="the graph branches at node 'add'"):
        parity.torch_ops(Residual())


def test_unsupported_keras_layer_is_named(keras):
    keras_model = keras.Sequential([keras.Input((8, 8, 8, 3)), keras.layers.Conv3D(2, 3)])
    with pytest.raises(ValueError, match=r"unsupported layer Conv3D at layer 0 'conv3d.*'; "
                                         "supported: .*Conv2D"):
        parity.params_from_keras(keras_model, like={"dense_0": {"kernel": np.zeros((3, 2))}})


def test_unsupported_fnlearn_layer_is_named(torch, keras):
    model = nn.serial(nn.Flatten(), nn.Dense(4), nn.from_flax(_flax_module()))
    for build, target in ((parity.to_torch_module, "PyTorch"), (parity.to_keras_model, "Keras")):
        with pytest.raises(ValueError, match=f"fnlearn layer 'flax_dense' at position 2 has no "
                                             f"{target} counterpart; supported kinds: "):
            build(model, (3,))


def _flax_module():
    import flax.linen

    return flax.linen.Dense(2)

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


def test_unsupported_torch_layer_is_named(torch):
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4), torch.nn.ReLU(),
                                 torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="Conv2d at position 3 is not supported: fnlearn "
                                         "supports Linear, ReLU"):
        parity.params_from_torch(module, like={})


def test_torch_linear_without_bias_is_refused(torch):
    module = torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False))
    with pytest.raises(ValueError, match="Linear at position 0 has no bias"):
        parity.params_from_torch(module, like={"dense_0": {"kernel": np.zeros((4, 2)),
                                                           "bias": np.zeros(2)}})


def test_unsupported_keras_layer_is_named(keras):
    keras_model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match=r"Conv2D at position 0 \('conv2d.*'\) is not "
                                         "supported: fnlearn supports Dense"):
        parity.params_from_keras(keras_model, like={})


def test_unsupported_fnlearn_layer_is_named(torch, keras):
    model = nn.serial(nn.Flatten(), nn.Dense(4), nn.from_flax(_flax_module()))
    for build in (parity.to_torch_module, parity.to_keras_model):
        with pytest.raises(ValueError, match="fnlearn layer 'flax_dense' at position 2 cannot be "
                                             "built in (PyTorch|Keras)"):
            build(model, (3,))


def _flax_module():
    import flax.linen

    return flax.linen.Dense(2)

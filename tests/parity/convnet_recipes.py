"""The two MNIST convnet recipes for the parity tests: models, losses in each framework.

fnlearn's ``keras_convnet()`` (Keras's "Simple MNIST convnet", categorical
cross-entropy of its softmax) and ``torch_mnist_net()`` (the PyTorch examples' ``Net``,
NLL of its log-softmax).
"""

import jax
import numpy as np

from fnlearn import losses, models, nn

IMAGE = (28, 28, 1)
# Forward outputs, per element, relative: float32 convolutions summed in another order.
FORWARD_RTOL = 1e-5
# Gradients, per element: rel 1e-5 plus 1e-5 of the tensor's largest |gradient| (entries
# that are sums of cancelling terms carry rounding, not information; see test_gradients).
# 1e-5, not the MLP's 1e-6: the CPU convolution sums the kernel gradient over the batch in
# another order than PyTorch and Keras do (measured worst: 1.9e-6 of the largest).
GRAD_RTOL, GRAD_ATOL_FRACTION = 1e-5, 1e-6


def without_dropout(model: nn.Layer) -> nn.Layer:
    """The same network with its Dropout layers left out (deterministic training)."""
    return nn.serial(*[layer for layer in model.children if layer.kind != "dropout"])


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


# --- the recipes' losses, in each framework ------------------------------------------------


def fnlearn_loss(recipe: str):
    if recipe == "keras_convnet":
        return lambda y, p: losses.categorical_crossentropy(jax.nn.one_hot(y, 10), p)
    return losses.nll_loss


def torch_loss(torch, recipe: str):
    if recipe == "keras_convnet":
        # Keras's documented probability cross-entropy: clip, renormalize, log.
        def crossentropy(probabilities, labels):
            clipped = probabilities.clamp(1e-7, 1 - 1e-7)
            log_probs = torch.log(clipped / clipped.sum(dim=-1, keepdim=True))
            return torch.nn.functional.nll_loss(log_probs, labels)
        return crossentropy
    return torch.nn.functional.nll_loss


def keras_loss(tf, keras, recipe: str):
    if recipe == "keras_convnet":
        cce = keras.losses.CategoricalCrossentropy()
        return lambda labels, probabilities: cce(tf.one_hot(tf.cast(tf.reshape(labels, [-1]),
                                                                    tf.int32), 10),
                                                 probabilities)
    return lambda labels, log_probs: -tf.gather(
        log_probs, tf.cast(tf.reshape(labels, [-1]), tf.int32), batch_dims=1)


RECIPES = {"keras_convnet": models.keras_convnet, "torch_mnist_net": models.torch_mnist_net}

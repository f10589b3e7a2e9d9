"""The reference programs' models, defined once: the article's MLP and the two MNIST convnets.

Experiments, the benchmark, the accelerator check and the docs all build their
models here, so a change to a recipe's model is made in one place.
"""

from __future__ import annotations

from fnlearn import nn


def article_mlp() -> nn.Layer:
    """The article's Keras MNIST model: Flatten, Dense 128 relu, Dropout 0.2, Dense 10 softmax.

    Takes uint8 images of shape (28, 28); the first layer divides by 255 exactly as
    the article's ``images / 255.0``. Keras's initializers; 101,770 parameters.
    """
    return nn.serial(
        nn.Normalize(0.0, 255.0),
        nn.Flatten(),
        nn.Dense(128, activation="relu"),
        nn.Dropout(0.2),
        nn.Dense(10, activation="softmax"),
    )


def keras_convnet() -> nn.Layer:
    """Keras's "Simple MNIST convnet": two conv/pool blocks, Dropout 0.5, Dense 10 softmax.

    Takes uint8 images of shape (28, 28, 1); the first layer divides by 255 as the
    example's ``x.astype("float32") / 255``. Keras's initializers; 34,826 parameters.
    """
    return nn.serial(
        nn.Normalize(0.0, 255.0),
        nn.Conv2D(32, 3, activation="relu"),
        nn.MaxPool2D(2),
        nn.Conv2D(64, 3, activation="relu"),
        nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Dense(10, activation="softmax"),
    )


def torch_mnist_net() -> nn.Layer:
    """PyTorch examples' ``mnist/main.py`` ``Net``, returning log-probabilities for ``nll_loss``.

    Takes uint8 images of shape (28, 28, 1). torchvision's ``ToTensor`` then
    ``Normalize((0.1307,), (0.3081,))`` are two float32 steps, reproduced as two
    layers: ``Normalize(0, 255)`` (exact, as ``ToTensor``'s division) and
    ``Normalize(0.1307, 0.3081)`` (within one float32 ulp: XLA on CPU multiplies by
    the reciprocal of the constant). Convolutions are ``Conv2d(1, 32, 3, 1)`` and
    ``Conv2d(32, 64, 3, 1)`` with PyTorch's initialization, then max-pool 2,
    Dropout 0.25, Linear(9216, 128) relu, Dropout 0.5, Linear(128, 10),
    log-softmax. Activations are NHWC, so the flattened features are in
    (h, w, c) order where PyTorch's are (c, h, w): converting ``fc1``'s weight
    needs that permutation. 1,199,882 parameters.
    """
    return nn.serial(
        nn.Normalize(0.0, 255.0),
        nn.Normalize(0.1307, 0.3081),
        nn.Conv2D(32, 3, 1, activation="relu", init="torch"),
        nn.Conv2D(64, 3, 1, activation="relu", init="torch"),
        nn.MaxPool2D(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(9216, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, 10),
        nn.LogSoftmax(),
    )

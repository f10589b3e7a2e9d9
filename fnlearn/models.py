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

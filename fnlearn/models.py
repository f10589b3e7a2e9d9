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


def torch_mnist_rnn(unroll: int = 1) -> nn.Layer:
    """PyTorch examples' ``mnist_rnn/main.py`` ``Net``: each image's 28 rows as 28 time steps.

    Takes uint8 images of shape (28, 28, 1) or (28, 28), scaled as the program's
    ``ToTensor`` then ``Normalize((0.1307,), (0.3081,))``. ``LSTM(input_size=28,
    hidden_size=64, batch_first=True)`` with PyTorch's initialization and two biases,
    its last output, ``BatchNorm1d(64)``, dropout 0.25, ``Linear(64, 32)`` relu,
    dropout 0.5, ``Linear(32, 10)``, log-softmax. The program's two ``Dropout2d`` get
    ``(N, C)`` inputs, on which PyTorch 2.13 drops single elements (with a deprecation
    warning), so they are plain dropouts here. 26,602 parameters.

    Args:
      unroll: the LSTM's time steps per loop iteration (speed only).
    """
    return nn.serial(
        nn.Normalize(0.0, 255.0),
        nn.Normalize(0.1307, 0.3081),
        nn.Reshape((28, 28)),
        nn.LSTM(64, convention="torch", unroll=unroll),
        nn.BatchNorm(convention="torch"),
        nn.Dropout(0.25),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(32, 10),
        nn.LogSoftmax(),
    )


def mnist_vit(patch: int = 7, width: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128,
              dropout: float = 0.0) -> nn.Layer:
    """A Vision Transformer for 28x28 images: patches as tokens, a class token, pre-norm
    encoder blocks.

    Takes uint8 images of shape (28, 28, 1), scaled as the MNIST programs'
    ``Normalize((0.1307,), (0.3081,))``. Each ``patch`` x ``patch`` patch becomes a token of
    ``width`` features (a convolution with stride ``patch``; 7 gives 16 tokens), a class
    token goes first and learned position embeddings are added; ``depth``
    ``TransformerEncoderLayer(width, heads, mlp, dropout, "gelu", norm_first=True)`` blocks,
    a final LayerNorm, and a Linear on the class token gives the 10 logits. 139,018
    parameters with the defaults.
    """
    if 28 % patch:
        raise ValueError(f"mnist_vit patch {patch} must divide 28")
    tokens = (28 // patch) ** 2
    return nn.serial(
        nn.Normalize(0.0, 255.0),
        nn.Normalize(0.1307, 0.3081),
        nn.Conv2D(width, patch, strides=patch, init="torch"),
        nn.Reshape((tokens, width)),
        nn.ClassToken(),
        nn.PositionEmbedding(tokens + 1),
        *[nn.TransformerEncoderLayer(width, heads, mlp, dropout, "gelu", norm_first=True)
          for _ in range(depth)],
        nn.LayerNorm(convention="torch"),
        nn.TakeStep(0),
        nn.Linear(width, 10),
    )

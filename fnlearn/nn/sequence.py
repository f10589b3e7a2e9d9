"""Layers on token sequences ``(batch, length, features)``: position embeddings, a class
token, and pooling over the sequence.

- ``PositionEmbedding``: a learned ``(max_length, features)`` table, its first
  ``length`` rows added to the inputs (a ViT's ``x + pos_embedding``).
- ``SinusoidalPositionEmbedding``: the fixed sines and cosines of "Attention Is All You
  Need" added to the inputs: feature ``2i`` is ``sin(p / w^(2i/d))``, ``2i + 1`` is
  ``cos(p / w^(2i/d))`` (keras-hub's ``SinePositionEncoding``, PyTorch's tutorial).
- ``ClassToken``: a learned vector put before the first token (a ViT's ``[CLS]``).
- ``GlobalAveragePooling1D``: the mean over the sequence (Keras's layer, ``x.mean(1)``).
- ``TakeStep``: one position of the sequence (``x[:, index]``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fnlearn.nn.core import Layer, constructor


def _tokens(input_shape, layer: str):
    if len(input_shape) != 2:
        raise ValueError(f"{layer} needs per-example inputs (length, features), got shape "
                         f"{tuple(input_shape)}")
    return input_shape


@constructor
def PositionEmbedding(max_length: int, *, stddev: float = 0.02) -> Layer:
    """Adds a learned vector per position: ``x + embeddings[:length]``.

    Args:
      max_length: the longest sequence; longer inputs are refused.
      stddev: the table starts N(0, stddev), as ViT's position embeddings.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"PositionEmbedding max_length must be a positive int, got "
                         f"{max_length!r}")

    def init_fn(key, input_shape):
        length, features = _tokens(input_shape, "PositionEmbedding")
        if length > max_length:
            raise ValueError(f"PositionEmbedding max_length {max_length} is shorter than the "
                             f"inputs' {length} positions")
        table = stddev * jax.random.normal(key, (max_length, features), jnp.float32)
        return tuple(input_shape), {"embeddings": table}

    def apply_fn(params, x, *, key=None, train=False):
        table = params["embeddings"]
        if x.ndim != 3 or x.shape[1] > table.shape[0] or x.shape[2] != table.shape[1]:
            raise ValueError(f"PositionEmbedding holds {table.shape[0]} positions of "
                             f"{table.shape[1]} features; got inputs of shape {tuple(x.shape)}")
        return x + table[:x.shape[1]].astype(x.dtype)

    return Layer(init_fn, apply_fn, "position_embedding", {"max_length": max_length})


def sinusoids(length: int, features: int, max_wavelength: float = 10000.0) -> np.ndarray:
    """The ``(length, features)`` table ``SinusoidalPositionEmbedding`` adds (float32)."""
    position = np.arange(length, dtype=np.float64)[:, None]
    pair = (np.arange(features) // 2) * 2
    angle = position / np.power(max_wavelength, pair / features)
    table = np.where(np.arange(features) % 2 == 0, np.sin(angle), np.cos(angle))
    return table.astype(np.float32)


@constructor
def SinusoidalPositionEmbedding(max_wavelength: float = 10000.0) -> Layer:
    """Adds fixed sines and cosines of the position (see the module docstring); no weights."""
    if not max_wavelength > 0:
        raise ValueError(f"SinusoidalPositionEmbedding max_wavelength must be positive, got "
                         f"{max_wavelength!r}")

    def init_fn(key, input_shape):
        return tuple(_tokens(input_shape, "SinusoidalPositionEmbedding")), {}

    def apply_fn(params, x, *, key=None, train=False):
        table = sinusoids(x.shape[1], x.shape[2], max_wavelength)
        return x + jnp.asarray(table, x.dtype)

    return Layer(init_fn, apply_fn, "sinusoidal_position_embedding",
                 {"max_wavelength": max_wavelength})


@constructor
def ClassToken() -> Layer:
    """Puts a learned vector (zeros at first) before each sequence: length ``n`` -> ``n + 1``."""

    def init_fn(key, input_shape):
        length, features = _tokens(input_shape, "ClassToken")
        return (length + 1, features), {"token": jnp.zeros((features,), jnp.float32)}

    def apply_fn(params, x, *, key=None, train=False):
        token = jnp.broadcast_to(params["token"].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
        return jnp.concatenate([token, x], axis=1)

    return Layer(init_fn, apply_fn, "class_token")


@constructor
def GlobalAveragePooling1D() -> Layer:
    """The mean over the sequence: ``(batch, length, features)`` -> ``(batch, features)``."""

    def init_fn(key, input_shape):
        return (_tokens(input_shape, "GlobalAveragePooling1D")[1],), {}

    def apply_fn(params, x, *, key=None, train=False):
        return jnp.mean(x, axis=1)

    return Layer(init_fn, apply_fn, "global_avg_pool1d")


@constructor
def TakeStep(index: int = -1) -> Layer:
    """One position of each sequence, ``x[:, index]`` (a ViT's class token, an RNN's last
    output of ``return_sequences=True``)."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"TakeStep index must be an int, got {index!r}")

    def init_fn(key, input_shape):
        length, features = _tokens(input_shape, "TakeStep")
        if not -length <= index < length:
            raise ValueError(f"TakeStep index {index} is outside sequences of length {length}")
        return (features,), {}

    def apply_fn(params, x, *, key=None, train=False):
        return x[:, index]

    return Layer(init_fn, apply_fn, "take_step", {"index": index})

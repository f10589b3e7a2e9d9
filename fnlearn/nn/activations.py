"""Activation functions by name, as Keras's ``activation="relu"`` strings name them, and as layers.

A layer's ``activation`` argument is a name from ``ACTIVATIONS`` (kept in its config,
so converters and summaries can read it); ``activation_fn`` resolves it with a clear
error for a function passed where a name is expected.

Where the frameworks differ, a name means what Keras means by it: ``"leaky_relu"``
has Keras's slope 0.2 (PyTorch's ``F.leaky_relu`` defaults to 0.01: use
``LeakyReLU(0.01)``), ``"gelu"`` is the exact (erf) GELU of both frameworks and
``"gelu_tanh"`` PyTorch's ``approximate="tanh"`` (Keras ``gelu(x, approximate=True)``),
``"hard_sigmoid"`` is ``relu6(x + 3) / 6`` (Keras 3 and PyTorch's ``Hardsigmoid``),
``"swish"`` is ``"silu"``. ``"softmax"`` and ``"log_softmax"`` compute and return float32
for 16-bit inputs; the others keep their input's dtype. The layers (``GELU``,
``LeakyReLU``, ``ELU``, ``SiLU``, ``HardSigmoid``, ``ReLU6``, ``Tanh``, ``Sigmoid``) take
the parameters the names fix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fnlearn.nn.core import Layer, constructor
from fnlearn.nn.precision import widened

#: The activation functions by name, as ``Dense(..., activation=...)`` takes them.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    # In float32 for 16-bit inputs too (``nn.precision.FLOAT32_ACTIVATIONS``): a loss reads them.
    "softmax": lambda x: jax.nn.softmax(widened(x), axis=-1),
    "log_softmax": lambda x: jax.nn.log_softmax(widened(x), axis=-1),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.2),
    "elu": jax.nn.elu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "relu6": jax.nn.relu6,
}


def activation_fn(name: str | None) -> Callable[[jax.Array], jax.Array]:
    if name is not None and not isinstance(name, str):
        what = (f"the function {getattr(name, '__name__', type(name).__name__)}"
                if callable(name) else f"{type(name).__name__} {name!r}")
        raise TypeError(f"activation must be a name (one of {sorted(ACTIVATIONS)}) or None, "
                        f"got {what}; pass its name, e.g. activation='relu'")
    name = name or "linear"
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _elementwise(kind: str, fn: Callable[[jax.Array], jax.Array], config=None) -> Layer:
    def init_fn(key, input_shape):
        return tuple(input_shape), {}

    def apply_fn(params, x, *, key=None, train=False):
        return fn(x)

    return Layer(init_fn, apply_fn, kind, config or {})


def _number(value, name: str, layer: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{layer} {name} must be a number, got {value!r}")
    return float(value)


@constructor
def GELU(approximate: bool = False) -> Layer:
    """GELU: ``x * Phi(x)`` exactly (erf), or its tanh approximation with ``approximate=True``
    (PyTorch ``nn.GELU(approximate="tanh")``, Keras ``gelu(x, approximate=True)``)."""
    if not isinstance(approximate, bool):
        raise ValueError(f"GELU approximate must be True or False, got {approximate!r}")
    kind = "gelu_tanh" if approximate else "gelu"
    return _elementwise(kind, ACTIVATIONS[kind])


_LEAKY_SLOPES = {"keras": 0.3, "torch": 0.01}


@constructor
def LeakyReLU(negative_slope: float | None = None, *, convention: str = "keras") -> Layer:
    """``x`` where positive, ``negative_slope * x`` elsewhere.

    The default slope is the convention's: 0.3 for Keras's ``layers.LeakyReLU``, 0.01
    for PyTorch's ``nn.LeakyReLU`` (the activation name ``"leaky_relu"`` has Keras's
    function default, 0.2).
    """
    if convention not in _LEAKY_SLOPES:
        raise ValueError(f"LeakyReLU convention must be 'keras' or 'torch', got {convention!r}")
    slope = _number(_LEAKY_SLOPES[convention] if negative_slope is None else negative_slope,
                    "negative_slope", "LeakyReLU")
    return _elementwise("leaky_relu", functools.partial(jax.nn.leaky_relu, negative_slope=slope),
                        {"negative_slope": slope})


@constructor
def ELU(alpha: float = 1.0) -> Layer:
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere (Keras and PyTorch ``ELU``)."""
    alpha = _number(alpha, "alpha", "ELU")
    return _elementwise("elu", functools.partial(jax.nn.elu, alpha=alpha), {"alpha": alpha})


@constructor
def SiLU() -> Layer:
    """``x * sigmoid(x)`` (PyTorch ``nn.SiLU``, Keras ``silu``/``swish``)."""
    return _elementwise("silu", jax.nn.silu)


@constructor
def HardSigmoid() -> Layer:
    """``relu6(x + 3) / 6`` (PyTorch ``nn.Hardsigmoid``, Keras 3 ``hard_sigmoid``)."""
    return _elementwise("hard_sigmoid", jax.nn.hard_sigmoid)


@constructor
def ReLU6() -> Layer:
    """``min(max(x, 0), 6)`` (PyTorch ``nn.ReLU6``, Keras ``relu6``)."""
    return _elementwise("relu6", jax.nn.relu6)


@constructor
def Tanh() -> Layer:
    """``tanh(x)`` as a layer (PyTorch ``nn.Tanh``)."""
    return _elementwise("tanh", jnp.tanh)


@constructor
def Sigmoid() -> Layer:
    """``1 / (1 + exp(-x))`` as a layer (PyTorch ``nn.Sigmoid``)."""
    return _elementwise("sigmoid", jax.nn.sigmoid)

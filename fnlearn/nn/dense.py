"""Dense layers and the small ones around them: activations, Flatten, Normalize, dropout.

All are stateless ``(init, apply)`` pairs (see ``fnlearn.nn.core``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fnlearn.nn import precision
from fnlearn.nn.activations import ACTIVATIONS, activation_fn
from fnlearn.nn.core import Layer, Shape, constructor


def glorot_uniform(key: jax.Array, shape: Shape, fan_in: int, fan_out: int) -> jax.Array:
    """Keras ``Dense`` kernel default: U(-l, l) with l = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def torch_linear_uniform(key: jax.Array, shape: Shape, fan_in: int) -> jax.Array:
    """PyTorch ``nn.Linear`` default for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


@constructor
def Dense(units: int, activation: str | None = None, *, use_bias: bool = True,
          init: str = "keras", dtype=None, param_dtype="float32") -> Layer:
    """A fully connected layer ``activation(x @ kernel + bias)`` on the last axis.

    Args:
      units: output features.
      activation: one of ``ACTIVATIONS`` (None means linear).
      use_bias: add a bias (Keras's ``use_bias``, PyTorch's ``bias``).
      init: ``"keras"`` (glorot-uniform kernel, zero bias, as ``keras.layers.Dense``)
        or ``"torch"`` (uniform +-1/sqrt(fan_in) for both, as ``torch.nn.Linear``).
      dtype: the dtype it computes in (``fnlearn.nn.precision``): None follows the
        inputs and parameters; ``"bfloat16"`` multiplies in bfloat16, sums, adds the
        bias and applies the activation in float32, and rounds once (softmax and
        log-softmax outputs stay float32).
      param_dtype: the parameters' dtype.

    The kernel is stored ``(in, out)`` as in Keras; PyTorch's ``weight`` is its transpose.
    """
    if isinstance(units, bool) or not isinstance(units, int) or units <= 0:
        raise ValueError(f"Dense units must be a positive int, got {units!r}")
    if init not in ("keras", "torch"):
        raise ValueError(f"Dense init must be 'keras' or 'torch', got {init!r}")
    act = activation_fn(activation)
    compute = precision.check_dtype(dtype, "Dense dtype")
    stored = precision.check_dtype(param_dtype, "Dense param_dtype")

    def init_fn(key, input_shape):
        fan_in = input_shape[-1]
        kernel_key, bias_key = jax.random.split(key)
        if init == "keras":
            kernel = glorot_uniform(kernel_key, (fan_in, units), fan_in, units)
            bias = jnp.zeros((units,), jnp.float32)
        else:
            kernel = torch_linear_uniform(kernel_key, (fan_in, units), fan_in)
            bias = torch_linear_uniform(bias_key, (units,), fan_in)
        params = {"kernel": kernel, "bias": bias} if use_bias else {"kernel": kernel}
        return (*input_shape[:-1], units), jax.tree.map(lambda p: p.astype(stored), params)

    def apply_fn(params, x, *, key=None, train=False):
        kernel = params["kernel"]
        dtype = precision.compute_dtype(compute, x, kernel)
        if precision.is_half(dtype):
            y = precision.product(x, kernel, dtype)
            y = act(y + params["bias"].astype(jnp.float32) if use_bias else y)
            return precision.rounded(y, dtype, activation)
        y = x.astype(dtype) @ kernel.astype(dtype)
        return act(y + params["bias"].astype(dtype) if use_bias else y)

    config = {"units": units, "activation": activation or "linear", "init": init,
              "bias": use_bias}
    return Layer(init_fn, apply_fn, "dense", config)


@constructor
def Linear(in_features: int, out_features: int, bias: bool = True, *, dtype=None,
           param_dtype="float32") -> Layer:
    """PyTorch's ``nn.Linear(in_features, out_features, bias)``, with its initialization.

    A ``Dense(out_features, use_bias=bias, init="torch", dtype=dtype,
    param_dtype=param_dtype)`` whose ``init`` checks that the inputs have
    ``in_features`` features. The kernel is stored ``(in, out)``; PyTorch's ``weight``
    is its transpose.
    """
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"Linear {name} must be a positive int, got {value!r}")
    dense = Dense(out_features, use_bias=bias, init="torch", dtype=dtype,
                  param_dtype=param_dtype)

    def init_fn(key, input_shape):
        if input_shape[-1] != in_features:
            raise ValueError(f"Linear({in_features}, {out_features}) got inputs with "
                             f"{input_shape[-1]} features (per-example shape {input_shape})")
        return dense.init(key, input_shape)

    return Layer(init_fn, dense.apply, "dense", {**dense.config, "in_features": in_features})


def _elementwise(kind: str, fn: Callable[[jax.Array], jax.Array]) -> Layer:
    def init_fn(key, input_shape):
        return tuple(input_shape), {}

    def apply_fn(params, x, *, key=None, train=False):
        return fn(x)

    return Layer(init_fn, apply_fn, kind)


@constructor
def ReLU() -> Layer:
    """``max(x, 0)``, as a layer of its own (PyTorch style)."""
    return _elementwise("relu", jax.nn.relu)


@constructor
def Softmax() -> Layer:
    """Softmax over the last axis."""
    return _elementwise("softmax", ACTIVATIONS["softmax"])


@constructor
def LogSoftmax() -> Layer:
    """Log-softmax over the last axis (PyTorch's ``nn.LogSoftmax(dim=-1)``), for ``nll_loss``."""
    return _elementwise("log_softmax", ACTIVATIONS["log_softmax"])


@constructor
def Activation(activation: str) -> Layer:
    """Any of ``ACTIVATIONS`` as a layer of its own (Keras ``layers.Activation``)."""
    return _elementwise(activation, activation_fn(activation))


@constructor
def Flatten(channels_first: bool = False) -> Layer:
    """Flattens every axis but the batch axis.

    Args:
      channels_first: flatten an NHWC image in PyTorch's (C, H, W) order instead of
        (H, W, C), so the features line up with a PyTorch model's ``torch.flatten``
        (what ``fnlearn.parity.from_torch`` uses when no Linear follows to absorb the order).
    """

    def init_fn(key, input_shape):
        return (math.prod(input_shape),), {}

    def apply_fn(params, x, *, key=None, train=False):
        if channels_first and x.ndim == 4:
            x = x.transpose(0, 3, 1, 2)
        return x.reshape(x.shape[0], -1)

    return Layer(init_fn, apply_fn, "flatten", {"channels_first": True} if channels_first else {})


@constructor
def Normalize(mean: float = 0.0, std: float = 1.0) -> Layer:
    """``(x - mean) / std`` in float32, as torchvision's ``Normalize``.

    For 8-bit integer inputs the result is bit for bit NumPy's float64
    ``(x - mean) / std`` rounded to float32: ``Normalize(0, 255)`` on uint8 pixels
    equals the article's ``(images / 255.0).astype("float32")``. XLA on CPU turns a
    division into a multiplication by the reciprocal, which rounds differently for
    half of the 256 pixel values, so 8-bit inputs are looked up in a 256-entry table
    computed by NumPy instead. Keeping the data uint8 and normalizing per batch
    inside the compiled step keeps the dataset 4x smaller on the device.
    """
    if std == 0:
        raise ValueError("Normalize std must be non-zero")

    def init_fn(key, input_shape):
        return tuple(input_shape), {}

    def apply_fn(params, x, *, key=None, train=False):
        if jnp.issubdtype(x.dtype, jnp.integer) and jnp.dtype(x.dtype).itemsize == 1:
            low = int(jnp.iinfo(x.dtype).min)
            table = ((np.arange(low, low + 256, dtype=np.float64) - mean) / std).astype(np.float32)
            return jnp.asarray(table)[x.astype(jnp.int32) - low]
        x = x.astype(jnp.float32)
        if mean != 0:
            x = x - jnp.float32(mean)
        return x / jnp.float32(std)

    return Layer(init_fn, apply_fn, "normalize", {"mean": mean, "std": std})


@constructor
def Dropout(rate: float) -> Layer:
    """Drops a fraction ``rate`` of the inputs during training, scaling the rest by 1/(1-rate).

    ``rate`` is the fraction *dropped*, as in Keras and PyTorch. Active only when
    ``apply`` gets ``train=True``, which then requires ``key``.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout rate must be in [0, 1), got {rate!r}")

    def init_fn(key, input_shape):
        return tuple(input_shape), {}

    def apply_fn(params, x, *, key=None, train=False):
        if not train or rate == 0.0:
            return x
        if key is None:
            raise ValueError("Dropout with train=True needs a PRNG key: apply(..., key=key)")
        # A float32 probability draws float32 uniforms, the same bits with jax_enable_x64 on.
        keep = jax.random.bernoulli(key, jnp.float32(1.0 - rate), x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))

    return Layer(init_fn, apply_fn, "dropout", {"rate": rate})


@constructor
def SpatialDropout2D(rate: float) -> Layer:
    """Drops whole channels of NHWC images during training (Keras ``SpatialDropout2D``,
    PyTorch ``Dropout2d``), scaling the kept ones by 1/(1-rate).

    Each example drops a fraction ``rate`` of its channels, every pixel of them at once:
    neighbouring pixels are correlated, so element-wise dropout barely regularizes
    convolutions. Active only when ``apply`` gets ``train=True``, which then needs ``key``.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"SpatialDropout2D rate must be in [0, 1), got {rate!r}")

    def init_fn(key, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"SpatialDropout2D needs per-example inputs (height, width, "
                             f"channels), got shape {tuple(input_shape)}")
        return tuple(input_shape), {}

    def apply_fn(params, x, *, key=None, train=False):
        if not train or rate == 0.0:
            return x
        if key is None:
            raise ValueError("SpatialDropout2D with train=True needs a PRNG key: "
                             "apply(..., key=key)")
        keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0], 1, 1, x.shape[-1]))
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))

    return Layer(init_fn, apply_fn, "spatial_dropout2d", {"rate": rate})

"""Layers as pure ``(init, apply)`` pairs, composed with ``serial``.

A layer is a ``Layer`` named tuple of two pure functions:

* ``init(key, input_shape) -> (output_shape, params)``: shapes are per example
  (no batch axis), so a model's shapes are known before any data is seen.
* ``apply(params, x, *, key=None, train=False) -> y``: ``x`` carries a leading
  batch axis. ``key`` feeds randomness (dropout); ``train`` switches it on.

Parameters are plain dicts of arrays. ``serial`` keys each child's parameters
by ``"<kind>_<position>"`` (``dense_1``, ``dense_4``), so a checkpoint or a
weight conversion names the layer it is about.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]
Shape = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Layer:
    """A layer: two pure functions plus what summaries and converters need to know.

    Compared and hashed by identity, so a model can be a static argument of ``jax.jit``
    (one compilation per model object). Unpacks as ``init, apply = layer``, like stax.
    """

    init: Callable[..., tuple[Shape, Params]]
    apply: Callable[..., jax.Array]
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    children: tuple[Layer, ...] = ()

    def __iter__(self):
        return iter((self.init, self.apply))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
}


def _activation(name: str | None) -> Callable[[jax.Array], jax.Array]:
    name = name or "linear"
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def glorot_uniform(key: jax.Array, shape: Shape, fan_in: int, fan_out: int) -> jax.Array:
    """Keras ``Dense`` kernel default: U(-l, l) with l = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def torch_linear_uniform(key: jax.Array, shape: Shape, fan_in: int) -> jax.Array:
    """PyTorch ``nn.Linear`` default for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def Dense(units: int, activation: str | None = None, *, init: str = "keras") -> Layer:
    """A fully connected layer ``activation(x @ kernel + bias)`` on the last axis.

    Args:
      units: output features.
      activation: one of ``ACTIVATIONS`` (None means linear).
      init: ``"keras"`` (glorot-uniform kernel, zero bias, as ``keras.layers.Dense``)
        or ``"torch"`` (uniform +-1/sqrt(fan_in) for both, as ``torch.nn.Linear``).

    The kernel is stored ``(in, out)`` as in Keras; PyTorch's ``weight`` is its transpose.
    """
    if not isinstance(units, int) or units <= 0:
        raise ValueError(f"Dense units must be a positive int, got {units!r}")
    if init not in ("keras", "torch"):
        raise ValueError(f"Dense init must be 'keras' or 'torch', got {init!r}")
    act = _activation(activation)

    def init_fn(key, input_shape):
        fan_in = input_shape[-1]
        kernel_key, bias_key = jax.random.split(key)
        if init == "keras":
            kernel = glorot_uniform(kernel_key, (fan_in, units), fan_in, units)
            bias = jnp.zeros((units,), jnp.float32)
        else:
            kernel = torch_linear_uniform(kernel_key, (fan_in, units), fan_in)
            bias = torch_linear_uniform(bias_key, (units,), fan_in)
        return (*input_shape[:-1], units), {"kernel": kernel, "bias": bias}

    def apply_fn(params, x, *, key=None, train=False):
        return act(x @ params["kernel"] + params["bias"])

    config = {"units": units, "activation": activation or "linear", "init": init}
    return Layer(init_fn, apply_fn, "dense", config)


Linear = Dense


def _elementwise(kind: str, fn: Callable[[jax.Array], jax.Array]) -> Layer:
    def init_fn(key, input_shape):
        return tuple(input_shape), {}

    def apply_fn(params, x, *, key=None, train=False):
        return fn(x)

    return Layer(init_fn, apply_fn, kind)


def ReLU() -> Layer:
    """``max(x, 0)``, as a layer of its own (PyTorch style)."""
    return _elementwise("relu", jax.nn.relu)


def Softmax() -> Layer:
    """Softmax over the last axis."""
    return _elementwise("softmax", ACTIVATIONS["softmax"])


def Flatten() -> Layer:
    """Flattens every axis but the batch axis."""

    def init_fn(key, input_shape):
        return (math.prod(input_shape),), {}

    def apply_fn(params, x, *, key=None, train=False):
        return x.reshape(x.shape[0], -1)

    return Layer(init_fn, apply_fn, "flatten")


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
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))

    return Layer(init_fn, apply_fn, "dropout", {"rate": rate})


def serial(*layers: Layer) -> Layer:
    """Composes layers in order (``keras.Sequential`` / ``torch.nn.Sequential``).

    Keys are split once per layer, so adding a layer does not change the
    initialization of the others before it. Parameters of the layers that have
    any are stored under ``"<kind>_<position>"``.
    """
    if not layers:
        raise ValueError("serial needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is {type(layer).__name__}, not a Layer")
    names = [f"{layer.kind}_{i}" for i, layer in enumerate(layers)]

    def init_fn(key, input_shape):
        params = {}
        shape = tuple(input_shape)
        for name, layer, layer_key in zip(names, layers, jax.random.split(key, len(layers))):
            shape, layer_params = layer.init(layer_key, shape)
            if layer_params:
                params[name] = layer_params
        return shape, params

    def apply_fn(params, x, *, key=None, train=False):
        keys = jax.random.split(key, len(layers)) if key is not None else [None] * len(layers)
        for name, layer, layer_key in zip(names, layers, keys):
            x = layer.apply(params.get(name, {}), x, key=layer_key, train=train)
        return x

    return Layer(init_fn, apply_fn, "serial", {"names": names}, tuple(layers))


Sequential = serial


def init(model: Layer, key: jax.Array | int, input_shape: Sequence[int]) -> Params:
    """Initializes ``model`` for per-example ``input_shape`` and returns its parameters."""
    if isinstance(key, int):
        key = jax.random.key(key)
    return model.init(key, tuple(input_shape))[1]


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(math.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def _abstract_init(layer: Layer, key: jax.Array, input_shape: Shape) -> tuple[Shape, Params]:
    """``layer.init`` without allocating: the output shape and parameter shapes."""
    shapes = {}

    def params_only(k):
        shapes["out"], params = layer.init(k, input_shape)
        return params

    params = jax.eval_shape(params_only, key)
    return tuple(int(d) for d in shapes["out"]), params


def summary(model: Layer, input_shape: Sequence[int]) -> str:
    """A table like Keras ``model.summary()``: layer, output shape, parameter count, total.

    Shapes are computed abstractly (``jax.eval_shape``): nothing is allocated.
    """
    layers = model.children or (model,)
    names = model.config.get("names", [model.kind])
    rows = []
    shape = tuple(input_shape)
    key = jax.random.key(0)
    for name, layer in zip(names, layers):
        shape, params = _abstract_init(layer, key, shape)
        rows.append((f"{name} ({layer.kind.capitalize()})",
                     f"(None, {', '.join(map(str, shape))})", count_params(params)))
    total = sum(r[2] for r in rows)
    widths = [max(len("Layer (type)"), *(len(r[0]) for r in rows)) + 2,
              max(len("Output Shape"), *(len(r[1]) for r in rows)) + 2]
    rule = "-" * (widths[0] + widths[1] + 12)
    header = f"{'Layer (type)':<{widths[0]}}{'Output Shape':<{widths[1]}}{'Param #':>10}"
    lines = [rule, header, rule]
    lines += [f"{n:<{widths[0]}}{s:<{widths[1]}}{p:>10,}" for n, s, p in rows]
    lines += [rule, f"Total params: {total:,} ({total * 4 / 1024:.2f} KB as float32)", rule]
    return "\n".join(lines)


def from_flax(module: Any, *, train_argument: str | None = None) -> Layer:
    """Wraps a Flax ``linen`` module as a ``Layer`` usable wherever an fnlearn model is.

    linen's ``init``/``apply`` are the same idea as a layer's, with a concrete example
    instead of a shape and a variables dict around the parameters; this adapts the two.

    Args:
      module: a ``flax.linen.Module`` whose ``__call__`` takes a batch.
      train_argument: name of the module's keyword that switches training behaviour:
        ``"train"`` (passed ``train``) or ``"deterministic"`` (passed ``not train``);
        None if it has none. Dropout inside the module draws from the ``"dropout"`` rng.
    """
    if train_argument not in (None, "train", "deterministic"):
        raise ValueError(f"train_argument must be None, 'train' or 'deterministic', "
                         f"got {train_argument!r}")

    def mode(train):
        if train_argument is None:
            return {}
        return {train_argument: train if train_argument == "train" else not train}

    def init_fn(key, input_shape):
        example = jnp.zeros((1, *input_shape), jnp.float32)
        variables = module.init(key, example, **mode(False))
        if set(variables) - {"params"}:
            raise ValueError(f"from_flax supports modules whose only variable collection is "
                             f"'params'; this one also has {sorted(set(variables) - {'params'})}")
        out = jax.eval_shape(lambda v: module.apply(v, example, **mode(False)), variables)
        return tuple(out.shape[1:]), dict(variables.get("params", {}))

    def apply_fn(params, x, *, key=None, train=False):
        rngs = {"dropout": key} if key is not None else {}
        if train and train_argument is not None and key is None:
            raise ValueError("a Flax module in training mode needs a PRNG key: apply(..., key=key)")
        return module.apply({"params": params}, x, rngs=rngs, **mode(train))

    kind = f"flax_{type(module).__name__.lower()}"  # never mistaken for an fnlearn layer
    return Layer(init_fn, apply_fn, kind, {"flax_module": module})

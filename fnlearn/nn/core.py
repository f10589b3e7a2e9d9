"""The layer protocol, ``serial``, and the helpers that treat every model alike.

A layer is a ``Layer`` of two pure functions. Most layers hold no state:

* ``init(key, input_shape) -> (output_shape, params)``: shapes are per example
  (no batch axis), so a model's shapes are known before any data is seen.
* ``apply(params, x, *, key=None, train=False) -> y``: ``x`` has a leading batch
  axis; ``key`` feeds randomness (dropout), ``train`` switches it on.

A layer with non-trainable variables (BatchNorm's running statistics) is marked
``stateful=True`` and has one more value on each side:

* ``init(key, input_shape) -> (output_shape, params, state)``
* ``apply(params, x, *, state, key=None, train=False, mask=None) -> (y, state)``,
  where ``mask`` (shape ``(batch,)``) marks the real rows of a padded batch, so
  padding never enters batch statistics.

``serial`` is stateful when any child is, and threads the state through; a stateless
model never sees state at all. ``init_with_state`` and ``apply`` give one calling
convention for both kinds, which is what the training step uses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax

Params = dict[str, Any]
ModelState = dict[str, Any]
Shape = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Layer:
    """A layer: two pure functions plus what summaries and converters need to know.

    Compared and hashed by identity, so a model can be a static argument of ``jax.jit``
    (one compilation per model object). Unpacks as ``init, apply = layer``, like stax.

    Attributes:
      init, apply: the pure functions (see the module docstring for both protocols).
      kind: the layer's type name (``"dense"``, ``"conv2d"``): converters dispatch on it.
      config: the hyperparameters, as given.
      children: the layers a combinator (``serial``) is made of.
      stateful: whether ``init``/``apply`` carry non-trainable state.
    """

    init: Callable[..., tuple]
    apply: Callable[..., Any]
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    children: tuple[Layer, ...] = ()
    stateful: bool = False

    def __post_init__(self):
        # ``layer.init(0, shape)`` takes an int seed, as ``nn.init(layer, 0, shape)`` does.
        object.__setattr__(self, "init", _seeded(self.init))

    def __iter__(self):
        return iter((self.init, self.apply))


def _seeded(init_fn: Callable[..., tuple]) -> Callable[..., tuple]:
    """``init_fn`` accepting an int seed or a raw key as well as a typed key."""
    if getattr(init_fn, "accepts_seed", False):
        return init_fn

    @functools.wraps(init_fn)
    def init(key, *args, **kwargs):
        # None stays None: a layer without random parameters may be initialized without a key.
        return init_fn(None if key is None else as_key(key), *args, **kwargs)

    init.accepts_seed = True
    return init


def as_key(key: jax.Array | int, argument: str = "key") -> jax.Array:
    """A typed PRNG key from a key (typed or raw ``uint32[2]``) or an int seed."""
    if isinstance(key, bool) or not isinstance(key, int | jax.Array):
        raise TypeError(f"{argument} must be a jax.random key or an int seed, "
                        f"got {type(key).__name__}")
    if isinstance(key, int):
        return jax.random.key(key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(key)
    return key


def init_with_state(model: Layer, key: jax.Array | int,
                    input_shape: Sequence[int]) -> tuple[Shape, Params, ModelState]:
    """``(output_shape, params, state)`` for any model; ``state`` is ``{}`` when it has none."""
    out = model.init(as_key(key), tuple(input_shape))
    if model.stateful:
        return out
    shape, params = out
    return shape, params, {}


def init(model: Layer, key: jax.Array | int, input_shape: Sequence[int]) -> Params:
    """Initializes ``model`` for per-example ``input_shape`` and returns its parameters.

    Use ``init_with_state`` for a model with non-trainable state (BatchNorm).
    """
    return init_with_state(model, key, input_shape)[1]


def apply(model: Layer, params: Params, x: jax.Array, *, state: ModelState | None = None,
          key: jax.Array | None = None, train: bool = False,
          mask: jax.Array | None = None) -> tuple[Any, ModelState]:
    """Runs any model: ``(outputs, new_state)``; a stateless model returns its state as given.

    Args:
      model: the model.
      params: its parameters.
      x: a batch of inputs.
      state: the model state (from ``init_with_state``); ``{}`` or None if it has none.
      key: PRNG key for dropout when ``train``: a key (typed or raw) or an int seed.
      train: training mode (dropout on, batch statistics used and updated).
      mask: ``(batch,)`` weights of the real rows of a padded batch.
    """
    state = {} if state is None else state
    key = None if key is None else as_key(key)
    if model.stateful:
        return model.apply(params, x, state=state, key=key, train=train, mask=mask)
    return model.apply(params, x, key=key, train=train), state


def serial(*layers: Layer) -> Layer:
    """Composes layers in order (``keras.Sequential`` / ``torch.nn.Sequential``).

    Keys are split once per layer, so adding a layer does not change the
    initialization of the others before it. Parameters (and state) of the layers
    that have any are stored under ``"<kind>_<position>"``.
    """
    if not layers:
        raise ValueError("serial needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is {type(layer).__name__}, not a Layer")
    names = [f"{layer.kind}_{i}" for i, layer in enumerate(layers)]
    stateful = any(layer.stateful for layer in layers)

    def init_all(key, input_shape):
        params, state = {}, {}
        shape = tuple(input_shape)
        for name, layer, layer_key in zip(names, layers, jax.random.split(key, len(layers))):
            shape, layer_params, layer_state = init_with_state(layer, layer_key, shape)
            if layer_params:
                params[name] = layer_params
            if layer_state:
                state[name] = layer_state
        return shape, params, state

    def apply_all(params, x, *, state=None, key=None, train=False, mask=None):
        keys = jax.random.split(key, len(layers)) if key is not None else [None] * len(layers)
        new_state = {}
        for name, layer, layer_key in zip(names, layers, keys):
            x, layer_state = apply(layer, params.get(name, {}), x, state=(state or {}).get(name),
                                   key=layer_key, train=train, mask=mask)
            if layer_state:
                new_state[name] = layer_state
        return x, new_state

    if stateful:
        return Layer(init_all, apply_all, "serial", {"names": names}, tuple(layers), True)

    def init_fn(key, input_shape):
        shape, params, _ = init_all(key, input_shape)
        return shape, params

    def apply_fn(params, x, *, key=None, train=False):
        return apply_all(params, x, key=key, train=train)[0]

    return Layer(init_fn, apply_fn, "serial", {"names": names}, tuple(layers))


Sequential = serial


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(math.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def _abstract_init(layer: Layer, key: jax.Array, input_shape: Shape) -> tuple[Shape, Any, Any]:
    """``init_with_state`` without allocating: output shape, parameter and state shapes."""
    shapes = {}

    def variables(k):
        shapes["out"], params, state = init_with_state(layer, k, input_shape)
        return params, state

    params, state = jax.eval_shape(variables, key)
    return tuple(int(d) for d in shapes["out"]), params, state


def summary(model: Layer, input_shape: Sequence[int]) -> str:
    """A table like Keras ``model.summary()``: layer, output shape, parameter count, total.

    Shapes are computed abstractly (``jax.eval_shape``): nothing is allocated.
    Non-trainable state (BatchNorm statistics) is counted apart, as Keras does.
    """
    layers = model.children or (model,)
    names = model.config.get("names", [model.kind])
    rows = []
    shape = tuple(input_shape)
    key = jax.random.key(0)
    state_total = 0
    for name, layer in zip(names, layers):
        shape, params, state = _abstract_init(layer, key, shape)
        state_total += count_params(state)
        kind = "".join(part.capitalize() for part in layer.kind.split("_")).replace("2d", "2D")
        rows.append((f"{name} ({kind})",
                     f"(None, {', '.join(map(str, shape))})", count_params(params)))
    total = sum(r[2] for r in rows)
    widths = [max(len("Layer (type)"), *(len(r[0]) for r in rows)) + 2,
              max(len("Output Shape"), *(len(r[1]) for r in rows)) + 2]
    rule = "-" * (widths[0] + widths[1] + 12)
    header = f"{'Layer (type)':<{widths[0]}}{'Output Shape':<{widths[1]}}{'Param #':>10}"
    lines = [rule, header, rule]
    lines += [f"{n:<{widths[0]}}{s:<{widths[1]}}{p:>10,}" for n, s, p in rows]
    lines += [rule, f"Total params: {total:,} ({total * 4 / 1024:.2f} KB as float32)"]
    if state_total:
        lines.append(f"Non-trainable state: {state_total:,}")
    lines.append(rule)
    return "\n".join(lines)

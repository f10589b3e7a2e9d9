"""The layer protocol, layer identity and names, and the helpers that treat every model alike.

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

A layer with several inputs (``Add``, a graph model) gets them as a tuple, list or
dict of arrays in ``apply`` and of shapes in ``init``.

Identity: a layer built by fnlearn's constructors (``Dense(10, "relu")``) equals and
hashes like any other built by the same constructor with the same arguments, so
rebuilding a model reuses its compiled programs. A ``Layer(init, apply, ...)`` of
your own compares by identity. Names: every constructor takes ``name=``; a model keys
a layer's parameters by that name, or by ``<kind>_<n>`` (``dense_0``, ``dense_1``)
counting the unnamed layers of that kind in order.

``init_with_state`` and ``apply`` give one calling convention for stateless and
stateful models, which is what the training step uses.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import numpy as np

from fnlearn.nn import node as node_lib

#: A model's parameters: a dict of arrays (or of such dicts) keyed by layer name.
Params = dict[str, Any]
#: A model's non-trainable state (BatchNorm statistics), keyed like ``Params``.
ModelState = dict[str, Any]
#: A per-example shape, without the batch axis: ``(28, 28)``, ``(784,)``.
Shape = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Layer:
    """A layer: two pure functions plus what summaries and converters need to know.

    Usable as a static argument of ``jax.jit``. Unpacks as ``init, apply = layer``, like
    stax. Called on graph nodes (``layer(x)`` with ``x = nn.Input(...)``) it builds a
    graph model (``nn.Model``).

    Attributes:
      init, apply: the pure functions (see the module docstring for both protocols).
      kind: the layer's type name (``"dense"``, ``"conv2d"``): converters dispatch on it.
      config: the hyperparameters, as given.
      children: the layers a combinator (``serial``) is made of.
      stateful: whether ``init``/``apply`` carry non-trainable state.
      name: the name its parameters are stored under in a model (None: ``<kind>_<n>``).
      signature: what the layer was built from (a ``Signature``: constructor and
        arguments), set by ``constructor``; layers with equal signatures and names
        compute the same thing and compare equal, and ``rebuild`` builds the layer again
        with arguments changed. None compares by identity.
    """

    init: Callable[..., tuple]
    apply: Callable[..., Any]
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    children: tuple[Layer, ...] = ()
    stateful: bool = False
    name: str | None = None
    signature: Any = None

    def __post_init__(self):
        # ``layer.init(0, shape)`` takes an int seed, as ``nn.init(layer, 0, shape)`` does.
        object.__setattr__(self, "init", _seeded(self.init))
        check_name(self.name, "layer name")
        object.__setattr__(self, "_hash", id(self) if _by_identity(self)
                           else hash((self.signature, self.name, self.stateful)))

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, Layer) or _by_identity(self) or _by_identity(other):
            return False
        return (self._hash == other._hash and self.signature == other.signature
                and self.name == other.name and self.stateful == other.stateful)

    def __hash__(self) -> int:
        return self._hash

    def __iter__(self):
        return iter((self.init, self.apply))

    def __call__(self, *inputs):
        """This layer called on graph nodes: the node(s) of its output (``nn.Model``)."""
        return node_lib.call(self, inputs[0] if len(inputs) == 1 else inputs)

    def __repr__(self) -> str:
        name = "" if self.name is None else f" {self.name!r}"
        return f"<Layer {self.kind}{name}>"


@dataclass(frozen=True, eq=False)
class Signature:
    """What a layer was built from: compared by ``key``, rebuilt by calling ``build``.

    Attributes:
      key: a hashable stand-in for the constructor and its arguments; equal keys build
        layers that compute the same thing. None: the arguments cannot be compared
        (arrays among them), so the layer compares by identity.
      build: the constructor, called as ``build(*arguments.args, name=name,
        **arguments.kwargs)``.
      arguments: the ``inspect.BoundArguments`` it was called with, defaults applied.
    """

    key: Any
    build: Callable[..., Layer]
    arguments: inspect.BoundArguments

    def __eq__(self, other) -> bool:
        return isinstance(other, Signature) and self.key is not None and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


def _by_identity(layer: Layer) -> bool:
    return layer.signature is None or getattr(layer.signature, "key", 0) is None


def rebuild(layer: Layer, changes: dict[str, Any] | None = None,
            children: Callable[[Layer], Layer] | None = None) -> Layer:
    """``layer`` built again by its constructor, with arguments changed.

    Args:
      layer: a layer built by a ``constructor`` (or a graph model).
      changes: new values by argument name; names the constructor does not take are
        skipped, so one dict of changes fits every kind of layer.
      children: applied to every layer among the arguments (``serial``'s layers, a
        graph's layers), for a rebuild that goes down the tree.

    Returns:
      The new layer, with the same name; ``layer`` itself when it records no
      constructor (a ``Layer(init, apply, ...)`` of your own).
    """
    signature = layer.signature
    if not isinstance(signature, Signature):
        return layer
    arguments = signature.arguments.signature.bind(*signature.arguments.args,
                                                   **signature.arguments.kwargs)
    arguments.apply_defaults()
    arguments.arguments.pop("name", None)  # passed on its own, below
    for argument, value in list(arguments.arguments.items()):
        if children is not None:
            arguments.arguments[argument] = _map_layers(value, children)
    for argument, value in (changes or {}).items():
        if argument in arguments.arguments:
            arguments.arguments[argument] = value
    return signature.build(*arguments.args, name=layer.name, **arguments.kwargs)


def arguments_of(layer: Layer) -> dict[str, Any]:
    """The arguments ``layer``'s constructor was called with (defaults applied), or {}."""
    signature = layer.signature
    return dict(signature.arguments.arguments) if isinstance(signature, Signature) else {}


def _map_layers(value, fn: Callable[[Layer], Layer]):
    if isinstance(value, Layer):
        return fn(value)
    if isinstance(value, list | tuple):
        return type(value)(_map_layers(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_layers(v, fn) for k, v in value.items()}
    return value


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


def check_name(name, argument: str = "name") -> None:
    """Refuses a layer name that is not a non-empty string without ``/``."""
    if name is not None and (not isinstance(name, str) or not name or "/" in name):
        raise ValueError(f"{argument} must be a non-empty string without '/', got {name!r}")


class _Unhashable(Exception):
    pass


class _Same:
    """An argument compared by identity (an object whose equality fnlearn cannot vouch for)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Same) and self.value is other.value

    def __hash__(self):
        return id(self.value)


def _frozen(value):
    """A hashable stand-in for a constructor argument: equal only for arguments that build
    the same layer (types included, so ``1`` and ``1.0`` differ)."""
    if value is None or isinstance(value, bool | int | float | str | complex):
        return type(value).__name__, value
    if isinstance(value, Layer):
        return value
    if isinstance(value, np.generic):
        return str(value.dtype), value.item()
    if isinstance(value, list | tuple):
        return type(value).__name__, tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return "dict", tuple((_frozen(k), _frozen(v)) for k, v in value.items())
    if isinstance(value, np.ndarray | jax.Array):
        raise _Unhashable
    return _Same(value)  # functions and other objects: by identity


def constructor(build: Callable[..., Layer]) -> Callable[..., Layer]:
    """Decorates a layer constructor: adds ``name=`` and structural equality.

    The layers it returns carry a ``Signature`` (constructor and arguments): two built
    with equal arguments compare and hash equal, so ``jax.jit`` reuses one compilation
    for a model built twice, and ``rebuild`` can build one again with arguments
    changed. Arguments that are arrays make the layer compare by identity.
    """
    parameters = inspect.signature(build)
    qualified = f"{build.__module__}.{build.__qualname__}"

    @functools.wraps(build)
    def built(*args, name: str | None = None, **kwargs) -> Layer:
        check_name(name)
        layer = build(*args, **kwargs)
        bound = parameters.bind(*args, **kwargs)
        bound.apply_defaults()
        try:
            key = (qualified, _frozen(dict(bound.arguments)))
        except _Unhashable:
            key = None
        return replace(layer, name=name, signature=Signature(key, built, bound))

    built.constructs = qualified  # what its layers' signatures name: how a saved model finds it
    built.__signature__ = parameters.replace(parameters=[
        *parameters.parameters.values(),
        inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation="str | None")])
    return built


def constructor_arguments(layer: Layer) -> tuple[str, dict[str, Any]] | None:
    """What ``layer`` was built from: ``(constructor, {argument: value})``, or None.

    ``constructor`` is the qualified name of the ``@constructor`` function (its
    ``constructs`` attribute), the arguments are those it was called with, defaults
    filled in (``name=`` is ``layer.name``). None for a layer no constructor built (a
    ``Layer(init, apply, ...)`` of your own, a graph model) or built from arrays.
    """
    signature = layer.signature
    if not isinstance(signature, Signature) or signature.key is None:
        return None
    qualified = getattr(signature.build, "constructs", None)
    if qualified is None:
        return None
    return qualified, dict(signature.arguments.arguments)


def layer_names(layers: Sequence[Layer], where: str) -> list[str]:
    """The name of each layer of ``layers`` (distinct objects, in order) in a model.

    A layer's own ``name``, or ``<kind>_<n>`` with ``n`` counting the unnamed layers of
    that kind before it (skipping names the user took).

    Raises:
      ValueError: two layers have the same name (both are named, with their places).
    """
    taken: dict[str, int] = {}
    for position, layer in enumerate(layers):
        if layer.name is None:
            continue
        if layer.name in taken:
            first = taken[layer.name]
            raise ValueError(f"{where}: two layers are named {layer.name!r}: layer {first} "
                             f"({layers[first].kind}) and layer {position} ({layer.kind}); "
                             "names key the parameters, so they must be unique")
        taken[layer.name] = position
    counts: dict[str, int] = {}
    names = []
    for layer in layers:
        if layer.name is not None:
            names.append(layer.name)
            continue
        n = counts.get(layer.kind, 0)
        while f"{layer.kind}_{n}" in taken:
            n += 1
        counts[layer.kind] = n + 1
        names.append(f"{layer.kind}_{n}")
    return names


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


def as_shape(input_shape) -> Any:
    """A per-example shape as a tuple of ints, or a tuple or dict of them (several inputs)."""
    if isinstance(input_shape, dict):
        return {key: as_shape(value) for key, value in input_shape.items()}
    if isinstance(input_shape, list | tuple) and input_shape and all(
            isinstance(s, list | tuple | dict) for s in input_shape):
        return tuple(as_shape(s) for s in input_shape)
    try:
        return tuple(int(d) for d in input_shape)
    except TypeError as error:
        raise TypeError(f"input_shape must be a tuple of ints (per example), or a dict or "
                        f"tuple of them for several inputs; got {input_shape!r}") from error


def init_with_state(model: Layer, key: jax.Array | int,
                    input_shape: Sequence[int] | Any) -> tuple[Any, Params, ModelState]:
    """``(output_shape, params, state)`` for any model; ``state`` is ``{}`` when it has none."""
    out = model.init(as_key(key), as_shape(input_shape))
    if model.stateful:
        return out
    shape, params = out
    return shape, params, {}


def init(model: Layer, key: jax.Array | int, input_shape: Sequence[int] | Any) -> Params:
    """Initializes ``model`` for per-example ``input_shape`` and returns its parameters.

    Use ``init_with_state`` for a model with non-trainable state (BatchNorm).
    """
    return init_with_state(model, key, input_shape)[1]


def apply(model: Layer, params: Params, x, *, state: ModelState | None = None,
          key: jax.Array | None = None, train: bool = False,
          mask: jax.Array | None = None) -> tuple[Any, ModelState]:
    """Runs any model: ``(outputs, new_state)``; a stateless model returns its state as given.

    Args:
      model: the model.
      params: its parameters.
      x: a batch of inputs (a tuple or dict of batches for several inputs).
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


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(math.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def abstract_init(layer: Layer, key: jax.Array, input_shape) -> tuple[Any, Any, Any]:
    """``init_with_state`` without allocating: output shape, parameter and state shapes."""
    shapes = {}

    def variables(k):
        shapes["out"], params, state = init_with_state(layer, k, input_shape)
        return params, state

    params, state = jax.eval_shape(variables, key)
    return shapes["out"], params, state


def check_shared(name: str, first, again) -> None:
    """Refuses a second call of a shared layer that would need weights of other shapes."""
    def shapes(tree):
        return jax.tree.map(lambda a: tuple(a.shape), tree)

    if shapes(first) != shapes(again):
        raise ValueError(f"layer {name!r} is called more than once (shared weights), but its "
                         f"inputs there need weights of other shapes: {shapes(first)} at the "
                         f"first call, {shapes(again)} here")

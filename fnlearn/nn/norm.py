"""Normalization layers: BatchNorm (stateful: running statistics), LayerNorm, GroupNorm.

``BatchNorm`` follows the stateful protocol of ``fnlearn.nn.core``: its running
mean and variance are model state, not parameters. In training it normalizes
with the statistics of the real rows of the batch (``mask`` leaves out the
padding of a last partial batch) and returns updated running statistics; in
inference it normalizes with the running ones and returns them unchanged.

Keras and PyTorch define ``momentum`` oppositely:

=========  ==========================================  =======  ========  ===============
framework  running update                              default  epsilon   running var
=========  ==========================================  =======  ========  ===============
Keras      ``run = momentum * run + (1 - momentum) * b``  0.99     1e-3      biased
PyTorch    ``run = (1 - momentum) * run + momentum * b``  0.1      1e-5      unbiased
=========  ==========================================  =======  ========  ===============

``BatchNorm`` takes ``momentum`` in the meaning of its ``convention``, so numbers
copied from either framework's code mean what they meant there. Both normalize
with the biased batch variance; PyTorch's running variance is updated with the
unbiased one (``n / (n - 1)`` times it, n the real values per channel).

Statistics and the normalization itself are computed in float32 whatever the inputs'
dtype; the result comes out in the layer's ``dtype`` (None: the inputs' float dtype), so
under ``mixed_bfloat16`` a BatchNorm reads and writes bfloat16 activations and keeps its
sums, running statistics and parameters in float32, as Keras's and PyTorch's do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnlearn.nn import precision
from fnlearn.nn.core import Layer, constructor

_DEFAULTS = {"keras": (0.99, 1e-3), "torch": (0.1, 1e-5)}


@constructor
def BatchNorm(momentum: float | None = None, epsilon: float | None = None, *,
              convention: str = "keras", center: bool = True, scale: bool = True,
              dtype=None, param_dtype="float32") -> Layer:
    """Normalizes each channel (the last axis) with batch statistics (Keras ``BatchNormalization``).

    Args:
      momentum: in the convention's meaning (see the module docstring): with
        ``"keras"`` the weight of the old running value (default 0.99), with
        ``"torch"`` the weight of the batch's (default 0.1, PyTorch's ``BatchNorm2d``).
      epsilon: added to the variance (default 1e-3 for Keras, 1e-5 for PyTorch).
      convention: ``"keras"`` or ``"torch"``: the momentum meaning, the defaults and
        whether the running variance is biased (Keras) or unbiased (PyTorch).
      center: learn a per-channel offset ``beta`` (PyTorch: ``affine``).
      scale: learn a per-channel scale ``gamma``.
      dtype: the output dtype (None: the inputs'); statistics are float32 regardless.
      param_dtype: the dtype of ``gamma`` and ``beta``.

    Returns:
      A stateful layer: parameters ``gamma``/``beta``, state ``mean``/``var`` (float32).
    """
    if convention not in _DEFAULTS:
        raise ValueError(f"BatchNorm convention must be 'keras' or 'torch', got {convention!r}")
    default_momentum, default_epsilon = _DEFAULTS[convention]
    momentum = default_momentum if momentum is None else momentum
    epsilon = default_epsilon if epsilon is None else epsilon
    if isinstance(momentum, bool) or not isinstance(momentum, int | float) \
            or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"BatchNorm momentum must be a number in [0, 1], got {momentum!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or epsilon <= 0:
        raise ValueError(f"BatchNorm epsilon must be a positive number, got {epsilon!r}")
    # The weight the old running value keeps, whichever way momentum was given.
    decay = momentum if convention == "keras" else 1.0 - momentum
    unbiased = convention == "torch"
    out_dtype = precision.check_dtype(dtype, "BatchNorm dtype")
    stored = precision.check_dtype(param_dtype, "BatchNorm param_dtype")

    def init_fn(key, input_shape):
        if not input_shape:
            raise ValueError("BatchNorm needs inputs with a channel axis, got scalar examples")
        channels = input_shape[-1]
        params = _affine((channels,), center, scale, stored)
        state = {"mean": jnp.zeros((channels,), jnp.float32),
                 "var": jnp.ones((channels,), jnp.float32)}
        return tuple(input_shape), params, state

    def apply_fn(params, x, *, state, key=None, train=False, mask=None):
        x32 = x.astype(jnp.float32)
        if train:
            mean, var, new_state = _batch_statistics(x32, mask, state, decay, unbiased)
        else:
            mean, var, new_state = state["mean"], state["var"], state
        y = (x32 - mean) * jax.lax.rsqrt(var + jnp.float32(epsilon))
        if scale:
            y = y * params["gamma"].astype(jnp.float32)
        if center:
            y = y + params["beta"].astype(jnp.float32)
        return _output(y, x, out_dtype), new_state

    config = {"momentum": momentum, "epsilon": epsilon, "convention": convention,
              "decay": decay, "unbiased_running_var": unbiased, "center": center,
              "scale": scale}
    return Layer(init_fn, apply_fn, "batch_norm", config, stateful=True)


def _batch_statistics(x, mask, state, decay: float, unbiased: bool):
    """Masked per-channel mean and biased variance, and the updated running statistics."""
    axes = tuple(range(x.ndim - 1))
    weights = jnp.ones(x.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
    weights = weights.reshape(-1, *([1] * (x.ndim - 1)))
    per_row = 1
    for d in x.shape[1:-1]:
        per_row *= d
    count = jnp.sum(weights) * per_row
    safe = jnp.maximum(count, 1.0)
    mean = jnp.sum(x * weights, axis=axes) / safe
    var = jnp.sum(jnp.square(x - mean) * weights, axis=axes) / safe
    running_var = var * (count / jnp.maximum(count - 1.0, 1.0)) if unbiased else var
    stats = jax.lax.stop_gradient((mean, running_var))
    new_state = {"mean": decay * state["mean"] + (1.0 - decay) * stats[0],
                 "var": decay * state["var"] + (1.0 - decay) * stats[1]}
    return mean, var, new_state


_EPSILONS = {"keras": 1e-3, "torch": 1e-5}


def _epsilon(epsilon, convention: str, layer: str) -> float:
    if convention not in _EPSILONS:
        raise ValueError(f"{layer} convention must be 'keras' or 'torch', got {convention!r}")
    epsilon = _EPSILONS[convention] if epsilon is None else epsilon
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or epsilon <= 0:
        raise ValueError(f"{layer} epsilon must be a positive number, got {epsilon!r}")
    return float(epsilon)


def _affine(shape, center: bool, scale: bool, dtype=jnp.float32) -> dict:
    params = {}
    if scale:
        params["gamma"] = jnp.ones(shape, dtype)
    if center:
        params["beta"] = jnp.zeros(shape, dtype)
    return params


def _output(y, x, dtype):
    """The float32 result ``y`` in ``dtype``, or (None) in the inputs' float dtype."""
    if dtype is not None:
        return y.astype(dtype)
    return y.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else y


def _normalized(x, axes, epsilon, params, broadcast, dtype=None):
    """``(x - mean) / sqrt(var + epsilon)`` over ``axes`` (biased variance), then the affine."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + jnp.float32(epsilon))
    if "gamma" in params:
        y = y * broadcast(params["gamma"].astype(jnp.float32))
    if "beta" in params:
        y = y + broadcast(params["beta"].astype(jnp.float32))
    return _output(y, x, dtype)


@constructor
def LayerNorm(axis: int | tuple[int, ...] = -1, epsilon: float | None = None, *,
              center: bool = True, scale: bool = True, convention: str = "keras",
              dtype=None, param_dtype="float32") -> Layer:
    """Normalizes each example over ``axis`` (Keras ``LayerNormalization``, PyTorch ``LayerNorm``).

    Args:
      axis: the axis or axes normalized over, counting the batch axis as Keras does
        (-1, the default, is the features; PyTorch's ``normalized_shape`` of the last k
        dimensions is ``axis=(-k, ..., -1)``). ``gamma`` and ``beta`` have the shape of
        those axes.
      epsilon: added to the variance (1e-3 for Keras, 1e-5 for PyTorch by default).
      center, scale: learn ``beta`` and ``gamma`` (PyTorch: ``elementwise_affine``).
      convention: ``"keras"`` or ``"torch"``: the default epsilon.
      dtype, param_dtype: as ``BatchNorm``'s.

    Any rank works, so sequence and attention layers reuse it on ``(length, features)``.
    """
    axes = (axis,) if isinstance(axis, int) and not isinstance(axis, bool) else tuple(axis)
    if not axes or any(isinstance(a, bool) or not isinstance(a, int) or a == 0 for a in axes):
        raise ValueError(f"LayerNorm axis must be a non-zero int or ints (they count the batch "
                         f"axis, as Keras's do), got {axis!r}")
    eps = _epsilon(epsilon, convention, "LayerNorm")
    out_dtype = precision.check_dtype(dtype, "LayerNorm dtype")
    stored = precision.check_dtype(param_dtype, "LayerNorm param_dtype")

    def per_example(rank):
        out = sorted({a - 1 if a > 0 else rank + a for a in axes})
        if out[0] < 0 or out[-1] >= rank:
            raise ValueError(f"LayerNorm axis {axis!r} does not fit per-example inputs of rank "
                             f"{rank}")
        return out

    def init_fn(key, input_shape):
        dims = per_example(len(input_shape))
        return tuple(input_shape), _affine(tuple(input_shape[d] for d in dims), center, scale,
                                           stored)

    def apply_fn(params, x, *, key=None, train=False):
        dims = per_example(x.ndim - 1)
        shape = [1] * x.ndim
        for d in dims:
            shape[d + 1] = x.shape[d + 1]
        return _normalized(x, tuple(d + 1 for d in dims), eps, params,
                           lambda p: p.reshape(shape), out_dtype)

    return Layer(init_fn, apply_fn, "layer_norm",
                 {"axis": axes, "epsilon": eps, "center": center, "scale": scale,
                  "convention": convention})


@constructor
def GroupNorm(groups: int = 32, epsilon: float | None = None, *, center: bool = True,
              scale: bool = True, convention: str = "keras", dtype=None,
              param_dtype="float32") -> Layer:
    """Normalizes each example over groups of channels (Keras ``GroupNormalization``,
    PyTorch ``GroupNorm(num_groups, num_channels)``).

    The channels (the last axis) are split into ``groups`` consecutive groups; each is
    normalized over its channels and every other per-example axis. ``gamma`` and
    ``beta`` are per channel. ``groups=1`` normalizes over everything, ``groups=C`` is
    instance normalization.

    Args:
      groups: how many groups; it must divide the channels.
      epsilon: added to the variance (1e-3 for Keras, 1e-5 for PyTorch by default).
      center, scale: learn ``beta`` and ``gamma`` (PyTorch: ``affine``).
      convention: ``"keras"`` or ``"torch"``: the default epsilon.
      dtype, param_dtype: as ``BatchNorm``'s.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"GroupNorm groups must be a positive int, got {groups!r}")
    eps = _epsilon(epsilon, convention, "GroupNorm")
    out_dtype = precision.check_dtype(dtype, "GroupNorm dtype")
    stored = precision.check_dtype(param_dtype, "GroupNorm param_dtype")

    def init_fn(key, input_shape):
        if not input_shape or input_shape[-1] % groups:
            raise ValueError(f"GroupNorm groups {groups} must divide the channels (the last "
                             f"axis) of per-example inputs {tuple(input_shape)}")
        return tuple(input_shape), _affine((input_shape[-1],), center, scale, stored)

    def apply_fn(params, x, *, key=None, train=False):
        channels = x.shape[-1]
        grouped = x.reshape(*x.shape[:-1], groups, channels // groups)
        axes = (*range(1, x.ndim - 1), x.ndim)  # every axis but the batch and the group
        y = _normalized(grouped, axes, eps, params,
                        lambda p: p.reshape(groups, channels // groups), out_dtype)
        return y.reshape(x.shape)

    return Layer(init_fn, apply_fn, "group_norm",
                 {"groups": groups, "epsilon": eps, "center": center, "scale": scale,
                  "convention": convention})

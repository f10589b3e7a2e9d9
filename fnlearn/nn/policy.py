"""Precision policies: a whole model computing in bfloat16 while its variables stay float32.

Keras's ``keras.mixed_precision.Policy("mixed_bfloat16")`` and PyTorch's
``torch.autocast("cpu", torch.bfloat16)``, for fnlearn's layers::

    model = nn.with_policy(fl.models.keras_convnet(), "mixed_bfloat16")
    state, history = fl.fit(model, x, y, ...)        # or fl.fit(..., policy="mixed_bfloat16")

``with_policy`` rebuilds the model with ``dtype=<the policy's compute dtype>`` on every
layer that takes a ``dtype`` and left it None (``fnlearn.nn.precision``): products and
convolutions multiply bfloat16 operands and sum in float32, activations between layers
are bfloat16, softmax/log-softmax and normalization statistics are float32. A layer
given a ``dtype`` of its own keeps it (``Dense(10, dtype="float32")`` as the last
layer), as does a part of the model that has a policy of its own. Parameters are
created as before (``param_dtype``, float32), so the initial parameters are the same
bits as the float32 model's, and the optimizer updates float32 master weights. The
model's outputs come back in float32, so losses, metrics and ``predict`` read float32.

``"mixed_float16"`` is the same with float16, Keras's policy for GPUs: float16's 5
exponent bits lose small gradients, so it trains with loss scaling
(``fnlearn.optim.loss_scale``, Keras's ``LossScaleOptimizer``), which ``fit`` adds to
the optimizer as Keras's ``compile`` does. On CPU, XLA computes float16 products through
float32: it is there for parity and for accelerators, not for speed here.

Layers that record no constructor (a ``Layer(init, apply, ...)`` of your own,
``from_flax``) are kept as they are: they compute in what their inputs and parameters
promote to (float32 for float32 parameters).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import jax.numpy as jnp
import numpy as np

from fnlearn.nn.core import Layer, Signature, arguments_of, rebuild
from fnlearn.nn.precision import float32_outputs


@dataclass(frozen=True)
class Policy:
    """A precision policy (Keras's ``mixed_precision.Policy``).

    Attributes:
      name: ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``.
      compute_dtype: what layers compute in.
      variable_dtype: what parameters and optimizer state are kept in.
    """

    name: str
    compute_dtype: np.dtype
    variable_dtype: np.dtype = np.dtype(np.float32)

    @property
    def needs_loss_scale(self) -> bool:
        """float16's range is too small for gradients without loss scaling (bfloat16's is not)."""
        return self.compute_dtype == np.float16


POLICIES = {
    "float32": Policy("float32", np.dtype(np.float32)),
    "mixed_bfloat16": Policy("mixed_bfloat16", np.dtype(jnp.bfloat16)),
    "mixed_float16": Policy("mixed_float16", np.dtype(np.float16)),
}


def as_policy(policy: str | Policy) -> Policy:
    """``policy`` (a name in ``POLICIES`` or a ``Policy``) as a ``Policy``, or a clear error."""
    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)} or a Policy, got "
                         f"{policy!r}")
    return POLICIES[policy]


def _is_policy_layer(layer: Layer) -> bool:
    return isinstance(layer.signature, Signature) and layer.signature.build is _rebuilt


def policy_of(model: Layer) -> Policy | None:
    """The policy ``with_policy`` gave ``model``, or None."""
    return arguments_of(model)["policy"] if _is_policy_layer(model) else None


def _set_dtype(model: Layer, dtype: np.dtype) -> Layer:
    """``model`` with ``dtype`` on every layer that takes one and left it None."""
    done: dict[int, Layer] = {}  # by id: a layer used twice stays one (shared) layer

    def visit(layer: Layer) -> Layer:
        if id(layer) in done:
            return done[id(layer)]
        if _is_policy_layer(layer):
            new = layer  # a part with a policy of its own keeps it
        else:
            arguments = arguments_of(layer)
            changes = {"dtype": dtype} if "dtype" in arguments and arguments["dtype"] is None \
                else {}
            new = rebuild(layer, changes, visit) if arguments else layer
        done[id(layer)] = new
        return new

    return visit(model)


def with_policy(model: Layer, policy: str | Policy) -> Layer:
    """``model`` computing under ``policy`` (``"mixed_bfloat16"``, ...), variables float32.

    Args:
      model: any fnlearn model; one that already has a policy gets this one instead.
      policy: ``"float32"`` (the model as it was built), ``"mixed_bfloat16"``,
        ``"mixed_float16"`` (train it with ``fnlearn.optim.loss_scale``, which ``fit``
        adds), or a ``Policy``.

    Returns:
      The model rebuilt with the policy's compute dtype on every layer that left its
      ``dtype`` None, outputs cast to float32; equal models under equal policies compare
      equal (one compilation). Its parameters have the same names, shapes, dtypes and
      initial values as ``model``'s.

    Raises:
      ValueError: an unknown policy.
    """
    policy = as_policy(policy)
    if not isinstance(model, Layer):
        raise TypeError(f"with_policy needs a model (a Layer), got {type(model).__name__}")
    if _is_policy_layer(model):
        model = arguments_of(model)["model"]
    if policy.compute_dtype == np.float32:
        return model
    inner = _set_dtype(model, policy.compute_dtype)

    if inner.stateful:
        def apply_fn(params, x, *, state, key=None, train=False, mask=None):
            y, new_state = inner.apply(params, x, state=state, key=key, train=train, mask=mask)
            return float32_outputs(y), new_state
    else:
        def apply_fn(params, x, *, key=None, train=False):
            return float32_outputs(inner.apply(params, x, key=key, train=train))

    arguments = inspect.signature(with_policy).bind(model, policy)
    key = None if model.signature is None or getattr(model.signature, "key", 0) is None \
        else ("fnlearn.nn.policy.with_policy", model, policy)
    return replace(inner, apply=apply_fn, signature=Signature(key, _rebuilt, arguments))


def _rebuilt(model: Layer, policy: Policy, *, name: str | None = None) -> Layer:
    """``with_policy`` as ``nn.core.rebuild`` calls it (``name`` is the model's own)."""
    return with_policy(model, policy)

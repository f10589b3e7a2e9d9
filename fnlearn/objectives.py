"""What a training step computes and reports: the built-in supervised step, or your own.

A step, as ``fnlearn.loop`` and ``fnlearn.step`` drive it, is a hashable value with

* ``train(state, batch, mask, key) -> (new_state, sums, finite)``: one update on the
  batch ``(x, y)`` whose real rows ``mask`` marks;
* ``evaluate(state, batch, mask) -> sums``: the same logs in inference mode;
* ``zero_sums(state, batch)`` and ``logs(sums) -> {name: value}``: sums add up over
  the batches of an epoch, and ``logs`` turns the total into what ``History`` shows.

``Supervised`` is ``fit``'s step: a model, a loss per output (weighted), metrics per
output, an optimizer. ``Custom`` wraps a user's pure step ``step(state, batch, key)
-> (state, metrics)`` (Keras 3's ``train_step`` override, a GAN's two updates) so
it gets everything the built-in step gets: the compiled epoch, progress, History,
callbacks, checkpoints, meshes, the masked last batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fnlearn import losses as losses_lib
from fnlearn import optim
from fnlearn.nn.core import Layer, apply
from fnlearn.nn.precision import float32_outputs
from fnlearn.state import TrainState


class Batch(NamedTuple):
    """One batch as a custom step receives it: inputs, labels (None if none), the real rows."""

    x: Any
    y: Any
    mask: jax.Array


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """The mean of per-example ``values`` over the rows ``mask`` marks (padding excluded)."""
    weights = mask.astype(jnp.float32).reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    total = jnp.sum(values * weights)
    return total / jnp.maximum(jnp.sum(weights) * (values.size / max(mask.size, 1)), 1.0)


def _pick(tree, key):
    return tree if key is None else tree[key]


def _prefixed(key, name: str) -> str:
    return name if key is None else f"{key}_{name}"


@dataclass(frozen=True)
class Supervised:
    """The built-in step: predictions against labels, per output, with an optimizer.

    Attributes:
      model: the model.
      losses: ``(output, loss_fn, weight)`` triples; ``output`` is None for a model with
        one output, else the key (dict outputs) or index (tuple outputs) it applies to.
      metrics: ``(output, Metric)`` pairs.
      optimizer: the Optax optimizer (None for evaluation only).
    """

    model: Layer
    losses: tuple
    metrics: tuple
    optimizer: Any = None

    def _sums(self, params, model_state, batch, mask, key, train):
        x, y = batch
        preds, new_state = apply(self.model, params, x, state=model_state, key=key,
                                 train=train, mask=mask)
        # Losses and metrics of 16-bit outputs are computed in float32.
        preds = float32_outputs(preds)
        weights = mask.astype(jnp.float32)
        count = jnp.sum(weights)
        sums, total = {}, 0.0
        for output, fn, weight in self.losses:
            loss_sum = jnp.sum(fn(_pick(y, output), _pick(preds, output)) * weights)
            if output is not None:
                sums[_prefixed(output, "loss")] = (loss_sum, count)
            total = total + weight * loss_sum
        sums = {"loss": (total, count), **sums}
        for output, metric in self.metrics:
            sums[_prefixed(output, metric.name)] = metric.update(
                _pick(y, output), _pick(preds, output), weights)
        return total / jnp.maximum(count, 1.0), (new_state, sums)

    def _scaled(self, scale, *args):
        # The loss times ``scale`` (float16 loss scaling, ``optim.loss_scale``) is what is
        # differentiated; the loss itself travels in the aux for the finiteness check.
        loss, aux = self._sums(*args)
        return (loss if scale is None else loss * scale), (loss, aux)

    def train(self, state: TrainState, batch, mask, key):
        scale = optim.loss_scale_of(state.opt_state)
        grad_fn = jax.grad(partial(self._scaled, scale), has_aux=True)
        grads, (loss, (model_state, sums)) = grad_fn(state.params, state.model_state, batch,
                                                     mask, key, True)
        extra = ({"epoch": state.epoch}
                 if isinstance(self.optimizer, optax.GradientTransformationExtraArgs) else {})
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params, **extra)
        new_state = state._replace(params=optax.apply_updates(state.params, updates),
                                   opt_state=opt_state, model_state=model_state,
                                   step=state.step + 1)
        return new_state, sums, jnp.isfinite(loss)

    def evaluate(self, state: TrainState, batch, mask):
        return self._sums(state.params, state.model_state, batch, mask, None, False)[1][1]

    def zero_sums(self, state: TrainState, batch):
        mask = jnp.ones(jax.tree.leaves(batch)[0].shape[:1], jnp.bool_)
        shapes = jax.eval_shape(self.evaluate, state, batch, mask)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def names(self) -> list[str]:
        """The logged names, in order: ``loss``, per-output losses, metrics."""
        names = ["loss"] + [_prefixed(o, "loss") for o, _, _ in self.losses if o is not None]
        return names + [_prefixed(o, m.name) for o, m in self.metrics]

    def logs(self, sums) -> dict[str, jax.Array]:
        results = {name: losses_lib.mean_of(sums[name])
                   for name in sums if name == "loss" or name.endswith("_loss")}
        for output, metric in self.metrics:
            name = _prefixed(output, metric.name)
            results[name] = metric.result(sums[name])
        return {name: results[name] for name in self.names()}


def _keys(structure) -> tuple:
    if isinstance(structure, dict):
        return tuple(structure)
    return tuple(range(len(structure)))


def supervised(model: Layer, loss, optimizer=None, metrics=(), loss_weights=None,
               outputs=None) -> Supervised:
    """The built-in step for ``fit``'s ``loss``, ``metrics`` and ``loss_weights`` arguments.

    Args:
      model: the model.
      loss: a per-example loss or its name; for a model with several outputs, a dict
        (or list) of them by output, or one loss for every output.
      optimizer: the Optax optimizer.
      metrics: names, functions or ``Metric`` values; a dict (or list of lists) of them
        by output, or one list for every output.
      loss_weights: a dict (or list) of floats by output; 1.0 each by default.
      outputs: the model's output structure (a pytree of shapes), to check the dicts
        against; None for a model with one output.
    """
    multi = isinstance(outputs, dict | list | tuple) and not _is_shape(outputs)
    keys = _keys(outputs) if multi else (None,)
    losses = _by_output(loss, keys, "loss")
    missing = [k for k in keys if k not in losses]
    if missing:
        raise ValueError(f"loss has no entry for the model's outputs {missing} (its outputs are "
                         f"{list(keys)}): give each output a loss, or None to leave it "
                         "untrained")
    weights = _by_output(loss_weights if loss_weights is not None else 1.0, keys, "loss_weights")
    loss_triples = tuple((k, losses_lib.get_loss(losses[k]), float(weights.get(k, 1.0)))
                         for k in keys if losses.get(k) is not None)
    if not loss_triples:
        raise ValueError("loss: no output has a loss")
    if isinstance(metrics, dict):
        per_output = _by_output(metrics, keys, "metrics")
    elif multi and metrics and all(isinstance(m, list | tuple) for m in metrics):
        per_output = _by_output(list(metrics), keys, "metrics")
    else:
        per_output = {k: metrics for k in keys}
    metric_pairs = tuple((k, losses_lib.get_metric(m)) for k in keys
                         for m in _as_list(per_output.get(k)))
    names = [_prefixed(k, m.name) for k, m in metric_pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"metrics: two metrics share a logged name in {names}")
    return Supervised(model, loss_triples, metric_pairs, optimizer)


def _is_shape(value) -> bool:
    return isinstance(value, tuple) and all(isinstance(d, int) for d in value)


def _as_list(value) -> Sequence:
    if value is None:
        return ()
    return value if isinstance(value, list | tuple) else (value,)


def _by_output(value, keys: tuple, argument: str) -> dict:
    """``value`` spread over the outputs ``keys``: a dict or list by output, or one for all."""
    if keys == (None,):
        if isinstance(value, dict):
            raise ValueError(f"{argument} is a dict {sorted(value)} but the model has one "
                             "output; pass a single value")
        return {None: value}
    if isinstance(value, dict):
        unknown = sorted(str(k) for k in value if k not in keys)
        if unknown:
            raise ValueError(f"{argument} names outputs {unknown} the model does not have; "
                             f"its outputs are {list(keys)}")
        return dict(value)
    if isinstance(value, list):
        if len(value) != len(keys):
            raise ValueError(f"{argument} lists {len(value)} values for the model's "
                             f"{len(keys)} outputs {list(keys)}")
        return dict(zip(keys, value))
    return {k: value for k in keys}


@dataclass(frozen=True)
class Custom:
    """A user's own step, driven by ``fit`` as the built-in one is.

    Attributes:
      fn: ``fn(state, batch, key) -> (state, metrics)``: ``state`` a ``TrainState`` whose
        ``params``, ``opt_state`` and ``model_state`` may hold any pytrees (several
        networks), ``batch`` a ``Batch(x, y, mask)``, ``key`` this step's PRNG key;
        ``metrics`` a dict of scalars (use ``masked_mean`` for per-example values).
        The loop owns ``state.step``, ``state.epoch`` and ``state.key``.
      evaluate_fn: ``evaluate_fn(state, batch) -> metrics`` for validation, or None.
    """

    fn: Callable
    evaluate_fn: Callable | None = None

    def name(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)

    def _checked(self, metrics, where: str) -> dict:
        if not isinstance(metrics, dict):
            raise TypeError(f"the step {where} must return (state, metrics) with metrics a dict "
                            f"of scalars, got {type(metrics).__name__}")
        for name, value in metrics.items():
            if not isinstance(name, str) or jnp.shape(value) != ():
                raise ValueError(f"the step {where} returned metric {name!r} of shape "
                                 f"{jnp.shape(value)}; metrics must be named scalars (reduce "
                                 "per-example values with fnlearn.masked_mean)")
        return metrics

    def _weighted(self, metrics, mask) -> dict:
        count = jnp.sum(mask.astype(jnp.float32))
        sums = {name: (jnp.asarray(value, jnp.float32) * count, count)
                for name, value in metrics.items()}
        return sums

    def train(self, state: TrainState, batch, mask, key):
        where = f"{self.name()!r}"
        out = self.fn(state, Batch(*batch, mask), key)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"the step {where} must return a pair (state, metrics), got "
                            f"{type(out).__name__}")
        new_state, metrics = out
        if jax.tree.structure(new_state) != jax.tree.structure(state):
            raise ValueError(f"the step {where} returned a state of another structure than it "
                             f"was given:\n  given:    {jax.tree.structure(state)}\n  "
                             f"returned: {jax.tree.structure(new_state)}")
        metrics = self._checked(metrics, where)
        new_state = new_state._replace(step=state.step + 1, epoch=state.epoch, key=state.key)
        finite = optim.all_finite(metrics)
        return new_state, self._weighted(metrics, mask), finite

    def evaluate(self, state: TrainState, batch, mask):
        if self.evaluate_fn is None:
            raise ValueError(f"evaluating with the step {self.name()!r} needs an evaluation "
                             "step: pass eval_step=fn(state, batch) -> metrics")
        metrics = self._checked(self.evaluate_fn(state, Batch(*batch, mask)),
                                f"{getattr(self.evaluate_fn, '__name__', 'eval_step')!r}")
        return self._weighted(metrics, mask)

    def zero_sums(self, state: TrainState, batch):
        mask = jnp.ones(jax.tree.leaves(batch)[0].shape[:1], jnp.bool_)
        shapes = jax.eval_shape(lambda s, b: self.train(s, b, mask, jax.random.key(0))[1],
                                state, batch)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def logs(self, sums) -> dict[str, jax.Array]:
        return {name: losses_lib.mean_of(pair) for name, pair in sums.items()}

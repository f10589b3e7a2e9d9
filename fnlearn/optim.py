"""Optimizer presets that reproduce Keras's and PyTorch's defaults with Optax.

Optax is the optimizer library; these functions only choose its arguments. A preset
called again with the same arguments returns the same optimizer object, so a second
``fit`` with ``keras_adam()`` reuses the programs the first one compiled.

==================  =================================  ==============================
preset              matches                            Optax
==================  =================================  ==============================
``keras_adam()``    ``keras.optimizers.Adam()``        lr 1e-3, b1 0.9, b2 0.999,
                                                       eps 1e-7 (Keras placement)
``torch_adam()``    ``torch.optim.Adam(params)``       ``optax.adam(1e-3, eps=1e-8)``
``torch_sgd(lr)``   ``torch.optim.SGD(params, lr)``    ``optax.sgd(lr)``
``keras_sgd()``     ``keras.optimizers.SGD()``         ``optax.sgd(0.01)``
``torch_adadelta``  ``torch.optim.Adadelta(params)``   ``scale_by_adadelta`` (same
                                                       rule), then ``-lr(epoch)``
==================  =================================  ==============================

Where epsilon goes differs between the two Adams. PyTorch (and ``optax.adam``)
divide by ``sqrt(v_hat) + eps``; Keras divides the uncorrected moments,
``m / (sqrt(v) + eps)``, with the bias correction folded into the step size.
That equals ``m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2**t))``: early in training
Keras's effective epsilon is up to 30x larger. ``keras_adam`` reproduces it
exactly by giving ``optax.adam`` that epsilon as a schedule of the step.

Schedules per epoch (PyTorch's ``StepLR`` stepped once an epoch): ``step_lr``
returns a function of the epoch, and ``scale_by_epoch_schedule`` applies it. It is
an ``optax.GradientTransformationExtraArgs`` that reads the ``epoch`` keyword,
which fnlearn's training step passes (``state.epoch``), so no one has to turn
epochs into steps. Its state keeps the learning rate it last used, which ``fit``
logs as ``learning_rate``.

``loss_scale(optimizer)`` is Keras's ``LossScaleOptimizer`` for float16 training
(``policy="mixed_float16"``, where ``fit`` adds it): dynamic loss scaling, a step with
non-finite gradients skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

EpochSchedule = Callable[[jax.Array], jax.Array]


@functools.cache
def keras_adam(
    learning_rate: float | optax.Schedule = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999,
    epsilon: float = 1e-7
) -> optax.GradientTransformation:
    """``keras.optimizers.Adam`` with its defaults and its placement of epsilon.

    Args:
      learning_rate: a float, or an Optax schedule of the step (as Keras's
        ``LearningRateSchedule``); its current value is kept in
        ``opt_state.hyperparams["learning_rate"]``.
      beta_1, beta_2, epsilon: as Keras's.
    """

    def keras_epsilon(count):
        # count is the number of updates already applied; Keras's t is count + 1.
        t = count.astype(jnp.float32) + 1.0
        return epsilon / jnp.sqrt(1.0 - jnp.float32(beta_2) ** t)

    return optax.inject_hyperparams(optax.adam)(
        learning_rate=learning_rate, b1=beta_1, b2=beta_2, eps=keras_epsilon)


@functools.cache
def torch_adam(
    lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> optax.GradientTransformation:
    """``torch.optim.Adam`` with its defaults (same update rule as ``optax.adam``)."""
    return optax.adam(lr, b1=betas[0], b2=betas[1], eps=eps)


@functools.cache
def torch_sgd(lr: float, momentum: float = 0.0) -> optax.GradientTransformation:
    """``torch.optim.SGD(params, lr, momentum)``: ``p -= lr * g`` (plus heavy-ball momentum)."""
    return optax.sgd(lr, momentum=momentum or None)


@functools.cache
def keras_sgd(learning_rate: float = 0.01, momentum: float = 0.0) -> optax.GradientTransformation:
    """``keras.optimizers.SGD`` with its defaults (learning rate 0.01, kept in the state)."""
    return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate,
                                               momentum=momentum or None)


@functools.cache
def keras_rmsprop(learning_rate: float = 1e-3, rho: float = 0.9,
                  epsilon: float = 1e-7) -> optax.GradientTransformation:
    """``keras.optimizers.RMSprop`` with its defaults: ``p -= lr * g / (sqrt(ms) + eps)``."""
    return optax.inject_hyperparams(optax.rmsprop, static_args=("eps_in_sqrt",))(
        learning_rate=learning_rate, decay=rho, eps=epsilon, eps_in_sqrt=False)


@functools.cache
def step_lr(learning_rate: float, step_size: int = 1, gamma: float = 0.1) -> EpochSchedule:
    """PyTorch's ``StepLR`` stepped once per epoch: ``lr * gamma ** (epoch // step_size)``.

    Args:
      learning_rate: the rate of the first epoch (the optimizer's ``lr``).
      step_size: epochs between decays.
      gamma: the factor of each decay.

    Returns:
      A function of the (0-based) epoch number to the learning rate, for
      ``scale_by_epoch_schedule`` or ``torch_adadelta(schedule=...)``.
    """
    if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size <= 0:
        raise ValueError(f"step_lr step_size must be a positive int, got {step_size!r}")
    if not gamma > 0:
        raise ValueError(f"step_lr gamma must be positive, got {gamma!r}")

    def schedule(epoch):
        decays = jnp.asarray(epoch, jnp.int32) // step_size
        return jnp.float32(learning_rate) * jnp.float32(gamma) ** decays.astype(jnp.float32)

    return schedule


class EpochScheduleState(NamedTuple):
    """The learning rate ``scale_by_epoch_schedule`` applied last (what ``fit`` logs)."""

    learning_rate: jax.Array


def scale_by_epoch_schedule(schedule: EpochSchedule) -> optax.GradientTransformationExtraArgs:
    """Scales updates by ``-schedule(epoch)``, the epoch coming as the ``epoch`` keyword.

    Args:
      schedule: a function of the epoch (an int32 scalar) to the learning rate, e.g.
        ``step_lr(1.0, gamma=0.7)``.

    Returns:
      A transformation whose ``update(updates, state, params, *, epoch)`` needs the
      epoch; ``fnlearn.train_step``, ``train_epoch`` and ``fit`` pass ``state.epoch``.
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be a function of the epoch, got {schedule!r}")

    def init_fn(params):
        del params
        return EpochScheduleState(jnp.asarray(schedule(jnp.int32(0)), jnp.float32))

    def update_fn(updates, state, params=None, *, epoch=None, **extra_args):
        del params, extra_args
        if epoch is None:
            raise ValueError("scale_by_epoch_schedule needs the epoch: call "
                             "update(grads, state, params, epoch=epoch); fnlearn's train_step "
                             "and fit pass it")
        rate = jnp.asarray(schedule(epoch), jnp.float32)
        updates = jax.tree.map(lambda u: (-rate * u).astype(u.dtype), updates)
        return updates, EpochScheduleState(rate)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def epoch_learning_rate(opt_state) -> jax.Array | None:
    """The learning rate an epoch schedule in ``opt_state`` last applied (None: no schedule)."""
    found = [leaf.learning_rate for leaf in jax.tree.leaves(
        opt_state, is_leaf=lambda node: isinstance(node, EpochScheduleState))
        if isinstance(leaf, EpochScheduleState)]
    return found[0] if found else None


def _injected(node) -> bool:
    return (isinstance(node, optax.InjectStatefulHyperparamsState | optax.InjectHyperparamsState)
            and "learning_rate" in node.hyperparams)


def learning_rate(opt_state) -> jax.Array | None:
    """The learning rate kept in ``opt_state`` (``optax.inject_hyperparams``), or None."""
    found = [node.hyperparams["learning_rate"]
             for node in jax.tree.leaves(opt_state, is_leaf=_injected) if _injected(node)]
    return found[0] if found else None


def with_learning_rate(opt_state, value: float):
    """``opt_state`` with its kept learning rate set to ``value`` (what Keras's callbacks set).

    Raises:
      ValueError: the optimizer does not keep its learning rate in its state.
    """
    if learning_rate(opt_state) is None:
        raise ValueError(
            "the optimizer keeps no learning rate in its state to change: build it with "
            "optax.inject_hyperparams, e.g. optax.inject_hyperparams(optax.adam)"
            "(learning_rate=1e-3), or use fnlearn.optim.keras_adam/keras_sgd/keras_rmsprop "
            "(and the names 'adam', 'sgd', 'rmsprop')")

    def set_rate(node):
        if not _injected(node):
            return node
        old = node.hyperparams["learning_rate"]
        rate = jnp.asarray(value, jnp.result_type(old)).reshape(jnp.shape(old))
        return node._replace(hyperparams={**node.hyperparams, "learning_rate": rate})

    return jax.tree.map(set_rate, opt_state, is_leaf=_injected)


@functools.cache
def torch_adadelta(lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                   weight_decay: float = 0.0,
                   schedule: EpochSchedule | None = None) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adadelta`` with its defaults, optionally with a per-epoch schedule.

    PyTorch's rule, which ``optax.scale_by_adadelta`` computes the same way:
    ``v = rho v + (1 - rho) g^2``; ``d = sqrt(u + eps) / sqrt(v + eps) * g``;
    ``u = rho u + (1 - rho) d^2`` (the unscaled ``d``); ``p -= lr * d``. Weight decay
    adds ``weight_decay * p`` to the gradient first, as PyTorch does.

    Args:
      lr: the learning rate (ignored when ``schedule`` is given, which then sets it).
      rho, eps, weight_decay: as PyTorch's.
      schedule: a function of the epoch to the learning rate, e.g.
        ``step_lr(1.0, step_size=1, gamma=0.7)`` for the PyTorch example's
        ``StepLR(optimizer, step_size=1, gamma=0.7)``.
    """
    if not lr > 0:
        raise ValueError(f"torch_adadelta lr must be positive, got {lr!r}")
    parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    parts.append(optax.scale_by_adadelta(rho=rho, eps=eps))
    parts.append(scale_by_epoch_schedule(schedule if schedule is not None
                                         else (lambda epoch: jnp.float32(lr))))
    return optax.chain(*parts)


# Keras's optimizer strings, with Keras's defaults.
OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "adam": keras_adam,
    "sgd": keras_sgd,
    "rmsprop": keras_rmsprop,
}


def get_optimizer(name: str) -> optax.GradientTransformation:
    """The optimizer Keras builds for ``name`` (``"adam"``, ``"sgd"``, ``"rmsprop"``, any case).

    The same name gives the same object every time, so a second ``fit(...,
    optimizer="adam")`` reuses the first one's compiled programs.
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known names: {sorted(OPTIMIZERS)}, "
                         "or pass an Optax GradientTransformation")
    return _built(key)


@functools.cache
def _built(name: str) -> optax.GradientTransformation:
    return OPTIMIZERS[name]()


class LossScaleState(NamedTuple):
    """``loss_scale``'s state: the current scale, the finite steps since it last changed,
    and the wrapped optimizer's state."""

    scale: jax.Array
    good_steps: jax.Array
    inner: Any


@functools.cache
def loss_scale(optimizer: optax.GradientTransformation, initial_scale: float = 2.0 ** 15,
               growth_interval: int = 2000, factor: float = 2.0,
               min_scale: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """Dynamic loss scaling for float16 training: Keras's ``LossScaleOptimizer``.

    float16 keeps 5 exponent bits: gradients below about 6e-8 become zero in its
    backward pass. The training step multiplies the loss by ``scale`` (read from this
    optimizer's state, ``loss_scale_of``) before differentiating, so the gradients flow
    through the float16 layers ``scale`` times larger; this transformation divides them
    back before ``optimizer`` sees them. When a gradient is not finite (the scale was too
    large) the step is skipped: zero updates, ``optimizer``'s state kept, the scale
    divided by ``factor``. After ``growth_interval`` finite steps in a row the scale is
    multiplied by ``factor``. ``fit(..., policy="mixed_float16")`` wraps its optimizer in
    this unless it is wrapped already.

    Args:
      optimizer: the optimizer to wrap (its ``epoch`` keyword, if any, is passed on).
      initial_scale: the first scale (Keras: 2**15).
      growth_interval: finite steps before the scale grows (Keras: 2000).
      factor: what the scale is multiplied or divided by.
      min_scale: the scale never goes below this.

    Returns:
      An Optax transformation whose state is a ``LossScaleState``. Equal arguments give
      the same object (one compilation).
    """
    if not (initial_scale >= min_scale > 0 and factor > 1):
        raise ValueError(f"loss_scale needs initial_scale >= min_scale > 0 and factor > 1, "
                         f"got initial_scale={initial_scale!r}, min_scale={min_scale!r}, "
                         f"factor={factor!r}")
    if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) \
            or growth_interval < 1:
        raise ValueError(f"loss_scale growth_interval must be a positive int, got "
                         f"{growth_interval!r}")
    inner = optax.with_extra_args_support(optimizer)

    def init_fn(params):
        return LossScaleState(jnp.float32(initial_scale), jnp.int32(0), inner.init(params))

    def update_fn(grads, state, params=None, **extra_args):
        grads = jax.tree.map(lambda g: (g / state.scale).astype(g.dtype), grads)
        finite = all_finite(grads)
        updates, new_inner = inner.update(grads, state.inner, params, **extra_args)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        new_inner = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_inner,
                                 state.inner)
        good = jnp.where(finite, state.good_steps + 1, 0)
        grow = good >= growth_interval
        scale = jnp.where(finite, jnp.where(grow, state.scale * factor, state.scale),
                          jnp.maximum(state.scale / factor, min_scale))
        return updates, LossScaleState(scale.astype(jnp.float32), jnp.where(grow, 0, good),
                                       new_inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def all_finite(tree) -> jax.Array:
    """Whether every value of every array in ``tree`` is finite (True for an empty tree)."""
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
                             or [True]))


def loss_scale_of(opt_state) -> jax.Array | None:
    """The loss scale in ``opt_state`` (a ``loss_scale`` optimizer's state), or None."""
    return opt_state.scale if isinstance(opt_state, LossScaleState) else None


def is_loss_scaled(optimizer) -> bool:
    """Whether ``optimizer`` is a ``loss_scale`` wrapper (its state says so)."""
    try:
        return isinstance(jax.eval_shape(optimizer.init, {}), LossScaleState)
    except Exception:  # noqa: BLE001 - an optimizer that cannot init empty params is not one
        return False

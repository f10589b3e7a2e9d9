"""Optimizer presets that reproduce Keras's and PyTorch's defaults with Optax.

Optax is the optimizer library; these functions only choose its arguments.

==================  =================================  ==============================
preset              matches                            Optax
==================  =================================  ==============================
``keras_adam()``    ``keras.optimizers.Adam()``        lr 1e-3, b1 0.9, b2 0.999,
                                                       eps 1e-7 (Keras placement)
``torch_adam()``    ``torch.optim.Adam(params)``       ``optax.adam(1e-3, eps=1e-8)``
``torch_sgd(lr)``   ``torch.optim.SGD(params, lr)``    ``optax.sgd(lr)``
``keras_sgd()``     ``keras.optimizers.SGD()``         ``optax.sgd(0.01)``
==================  =================================  ==============================

Where epsilon goes differs between the two Adams. PyTorch (and ``optax.adam``)
divide by ``sqrt(v_hat) + eps``; Keras divides the uncorrected moments,
``m / (sqrt(v) + eps)``, with the bias correction folded into the step size.
That equals ``m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2**t))``: early in training
Keras's effective epsilon is up to 30x larger. ``keras_adam`` reproduces it
exactly by giving ``optax.adam`` that epsilon as a schedule of the step.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


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


def torch_adam(
    lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> optax.GradientTransformation:
    """``torch.optim.Adam`` with its defaults (same update rule as ``optax.adam``)."""
    return optax.adam(lr, b1=betas[0], b2=betas[1], eps=eps)


def torch_sgd(lr: float, momentum: float = 0.0) -> optax.GradientTransformation:
    """``torch.optim.SGD(params, lr, momentum)``: ``p -= lr * g`` (plus heavy-ball momentum)."""
    return optax.sgd(lr, momentum=momentum or None)


def keras_sgd(learning_rate: float = 0.01, momentum: float = 0.0) -> optax.GradientTransformation:
    """``keras.optimizers.SGD`` with its defaults (learning rate 0.01)."""
    return optax.sgd(learning_rate, momentum=momentum or None)


def keras_rmsprop(learning_rate: float = 1e-3, rho: float = 0.9,
                  epsilon: float = 1e-7) -> optax.GradientTransformation:
    """``keras.optimizers.RMSprop`` with its defaults: ``p -= lr * g / (sqrt(ms) + eps)``."""
    return optax.rmsprop(learning_rate, decay=rho, eps=epsilon, eps_in_sqrt=False)

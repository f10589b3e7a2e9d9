"""The recurrence of SimpleRNN, LSTM and GRU: parameters, one time step, and the ``lax.scan``.

fnlearn keeps Keras's layout whatever the convention: ``kernel`` ``(features, G*units)``,
``recurrent_kernel`` ``(units, G*units)``, ``bias`` ``(G*units,)``, the G gate blocks in
Keras's order: LSTM ``i, f, c, o`` (PyTorch's ``i, f, g, o``: the same order), GRU
``z, r, h`` (PyTorch's is ``r, z, n``: the converters swap the first two blocks). A
second bias, ``recurrent_bias``, is PyTorch's ``bias_hh`` (convention ``"torch"``) and
Keras's second bias row of a ``GRU(reset_after=True)``.

The input projection of every time step is one matrix product before the loop
(``einsum("btf,fg->tbg")``), with every bias that adds to it; the loop body holds only
the recurrent product and the gates.

With a 16-bit ``dtype`` both products take ``dtype`` operands and sum in float32
(``precision.einsum``); the states, the gates and the biases stay float32, so the
state is never rounded from one step to the next.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fnlearn.nn import precision
from fnlearn.nn.activations import ACTIVATIONS

GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
STATES = {"simple_rnn": 1, "lstm": 2, "gru": 1}


def has_recurrent_bias(kind: str, convention: str, use_bias: bool, reset_after: bool) -> bool:
    """Whether the layer keeps a second bias (PyTorch's ``bias_hh``, Keras GRU's second row)."""
    return use_bias and (convention == "torch" or (kind == "gru" and reset_after))


def init_params(key, kind: str, features: int, units: int, *, convention: str,
                use_bias: bool, reset_after: bool) -> dict:
    """The initial weights: Keras's initializers (glorot-uniform kernel, orthogonal recurrent
    kernel, zero biases and LSTM forget-gate bias 1) or PyTorch's (every tensor
    U(-1/sqrt(units), 1/sqrt(units)))."""
    width = GATES[kind] * units
    shapes = {"kernel": (features, width), "recurrent_kernel": (units, width)}
    if use_bias:
        shapes["bias"] = (width,)
    if has_recurrent_bias(kind, convention, use_bias, reset_after):
        shapes["recurrent_bias"] = (width,)
    keys = dict(zip(shapes, jax.random.split(key, len(shapes))))
    if convention == "torch":
        bound = 1.0 / math.sqrt(units)
        return {name: jax.random.uniform(keys[name], shape, jnp.float32, -bound, bound)
                for name, shape in shapes.items()}
    limit = math.sqrt(6.0 / (features + width))
    params = {
        "kernel": jax.random.uniform(keys["kernel"], shapes["kernel"], jnp.float32, -limit,
                                     limit),
        "recurrent_kernel": jax.nn.initializers.orthogonal()(
            keys["recurrent_kernel"], shapes["recurrent_kernel"], jnp.float32)}
    if use_bias:
        bias = jnp.zeros((width,), jnp.float32)
        params["bias"] = bias.at[units:2 * units].set(1.0) if kind == "lstm" else bias
    if "recurrent_bias" in shapes:
        params["recurrent_bias"] = jnp.zeros((width,), jnp.float32)
    return params


def _half(dtype) -> bool:
    return dtype is not None and precision.is_half(dtype)


def project_inputs(params: dict, x: jax.Array, kind: str, reset_after: bool,
                   dtype=None) -> jax.Array:
    """Every time step's input projection and the biases that add to it: ``(time, batch, G*u)``.

    A GRU's recurrent bias of the candidate stays in the loop (it is multiplied by the
    reset gate); every other bias is a constant of the step and joins the projection.
    ``dtype``: a 16-bit dtype multiplies in it and returns the float32 sums (None: the
    operands' own).
    """
    projected = (precision.einsum("btf,fg->tbg", x, params["kernel"], dtype) if _half(dtype)
                 else jnp.einsum("btf,fg->tbg", x, params["kernel"]))
    bias = params.get("bias")
    recurrent = params.get("recurrent_bias")
    if recurrent is not None:
        if kind == "gru":
            units = recurrent.shape[0] // 3
            recurrent = jnp.asarray(recurrent).at[2 * units:].set(0.0) if reset_after else recurrent
        bias = recurrent if bias is None else bias + recurrent
    return projected if bias is None else projected + bias.astype(projected.dtype)


def step_fn(kind: str, params: dict, activation: str, recurrent_activation: str,
            reset_after: bool, dtype=None):
    """``step(states, projected_t) -> (states, output_t)`` for one time step.

    ``dtype``: as ``project_inputs``'s, for the recurrent product.
    """
    act, gate = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]
    # The kernel goes into the product as stored: the product rounds it, and its
    # gradient comes back in the kernel's dtype, summed over the steps in that dtype.
    recurrent_kernel = params["recurrent_kernel"]
    half = _half(dtype)

    def recurrent(h, kernel):
        return precision.einsum("bu,ug->bg", h, kernel, dtype) if half else h @ kernel

    if kind == "simple_rnn":
        def step(states, projected):
            h = act(projected + recurrent(states[0], recurrent_kernel))
            return (h,), h
    elif kind == "lstm":
        def step(states, projected):
            h, c = states
            i, f, g, o = jnp.split(projected + recurrent(h, recurrent_kernel), 4, axis=-1)
            c = gate(f) * c + gate(i) * act(g)
            h = gate(o) * act(c)
            return (h, c), h
    else:
        units = recurrent_kernel.shape[0]
        candidate_bias = (params["recurrent_bias"][2 * units:]
                          if reset_after and "recurrent_bias" in params else None)
        if candidate_bias is not None and half:
            candidate_bias = candidate_bias.astype(jnp.float32)

        def step(states, projected):
            h, = states
            x_z, x_r, x_h = jnp.split(projected, 3, axis=-1)
            if reset_after:
                h_z, h_r, h_h = jnp.split(recurrent(h, recurrent_kernel), 3, axis=-1)
                r = gate(x_r + h_r)
                if candidate_bias is not None:
                    h_h = h_h + candidate_bias
                candidate = act(x_h + r * h_h)
            else:
                h_z, h_r = jnp.split(recurrent(h, recurrent_kernel[:, :2 * units]), 2, axis=-1)
                r = gate(x_r + h_r)
                candidate = act(x_h + recurrent(r * h, recurrent_kernel[:, 2 * units:]))
            z = gate(x_z + h_z)
            h = z * h + (1.0 - z) * candidate
            return (h,), h
    return step


def run(step, projected: jax.Array, initial: tuple, mask: jax.Array | None, *,
        sequences: bool, zero_output_for_mask: bool, unroll: int):
    """Scans ``step`` over time: ``(outputs, final_states)``.

    Args:
      step: from ``step_fn``.
      projected: ``(time, batch, G*units)`` from ``project_inputs``, in processing order.
      initial: the states at the first step, each ``(batch, units)``.
      mask: ``(time, batch)`` booleans (processing order), or None. A masked step keeps
        the states and repeats the previous output (zeros with ``zero_output_for_mask``),
        as Keras does; for a mask of real steps then padding this is PyTorch's packed
        sequence.
      sequences: return every step's output ``(time, batch, units)`` rather than the
        last ``(batch, units)``.
      zero_output_for_mask: masked steps of the output sequence are zeros.
      unroll: time steps per loop iteration (``lax.scan``'s ``unroll``).
    """
    if mask is None:
        def body(states, projected_t):
            states, out = step(states, projected_t)
            return states, out if sequences else None

        final, outputs = jax.lax.scan(body, initial, projected, unroll=unroll)
        return (outputs if sequences else final[0]), final

    def masked(carry, inputs):
        states, previous = carry
        projected_t, keep = inputs
        new_states, out = step(states, projected_t)
        keep = keep[:, None]
        states = tuple(jnp.where(keep, new, old) for new, old in zip(new_states, states))
        out = jnp.where(keep, out, previous)
        shown = jnp.where(keep, out, jnp.zeros_like(out)) if zero_output_for_mask else out
        return (states, out), shown if sequences else None

    previous = jnp.zeros_like(initial[0])
    (final, last), outputs = jax.lax.scan(masked, (initial, previous), (projected, mask),
                                          unroll=unroll)
    return (outputs if sequences else last), final

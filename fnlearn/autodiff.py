"""Gradients: ``jax.grad`` is the API; this module checks it against finite differences.

PyTorch records operations on tensors marked ``requires_grad=True`` and
``z.backward()`` fills ``x.grad``; TensorFlow records them on a ``GradientTape``.
JAX transforms the function instead, with nothing recorded or stored:

    grad_fn = jax.grad(loss)                  # d loss / d first argument
    loss_value, grads = jax.value_and_grad(loss)(params, x, y)
    jax.grad(loss, argnums=(0, 1))            # several arguments
    jax.grad(loss, has_aux=True)              # loss returns (value, aux)

Gradients come back as a pytree shaped like the parameters. When a gradient
is written by hand (``jax.custom_vjp``, ``jax.custom_jvp``) ``check_grad`` compares
it with central differences and names the leaf and element that disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

_CHUNK = 128  # finite-difference directions evaluated per vmapped call


class Mismatch(NamedTuple):
    """One gradient element where the analytic and numeric values disagree."""

    leaf: str  # path of the parameter leaf, e.g. "['dense']['w']"
    index: tuple[int, ...]  # element index within that leaf
    analytic: float
    numeric: float

    def __str__(self) -> str:
        where = self.leaf + (str(list(self.index)) if self.index else "")
        return f"{where}: analytic {self.analytic:.6g}, numeric {self.numeric:.6g}"


@dataclass(frozen=True)
class GradCheck:
    """The result of ``check_grad``.

    Attributes:
      ok: True when every element agrees within tolerance.
      checked: number of gradient elements compared.
      max_abs_error: largest ``|analytic - numeric|`` over all elements.
      mismatches: the elements that disagree, worst first.
    """

    ok: bool
    checked: int
    max_abs_error: float
    mismatches: tuple[Mismatch, ...]

    def __str__(self) -> str:
        if self.ok:
            return (f"gradient check passed: {self.checked} elements agree "
                    f"(max abs error {self.max_abs_error:.2g})")
        lines = [f"gradient check FAILED: {len(self.mismatches)} of {self.checked} "
                 f"elements disagree"]
        lines += [f"  {m}" for m in self.mismatches[:10]]
        if len(self.mismatches) > 10:
            lines.append(f"  ... and {len(self.mismatches) - 10} more")
        return "\n".join(lines)


class GradientCheckError(AssertionError):
    """Raised by ``check_grad(..., raise_on_failure=True)`` when gradients disagree."""


def check_grad(
    fn: Callable[..., Any],
    params: Any,
    *args: Any,
    float64: bool = True,
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    raise_on_failure: bool = False,
) -> GradCheck:
    """Compare ``jax.grad(fn)(params, *args)`` with central finite differences.

    Every element of every floating leaf of ``params`` is perturbed by
    ``h = eps * max(1, |p|)``; the numeric derivative is
    ``(fn(p + h) - fn(p - h)) / (2h)``. It costs two evaluations of ``fn`` per
    element, so check small models or small parameter subsets.

    Args:
      fn: scalar function ``fn(params, *args)``, e.g. a loss.
      params: pytree of floating arrays to differentiate with respect to.
      *args: further arguments (data), passed unchanged.
      float64: compute the finite differences in float64 (inside a local
        ``jax.enable_x64``), which makes them accurate enough to judge a float32
        gradient. With False they are computed in the params' own dtype.
      eps: relative step; default 1e-6 in float64, 5e-3 in float32 (about the
        cube root of float32's machine epsilon, which balances truncation and
        rounding error).
      rtol, atol: an element agrees when
        ``|analytic - numeric| <= atol + rtol * |numeric| + noise``, where
        ``noise = machine epsilon * max(1, |fn|) / h`` is the rounding error
        the difference itself may carry; default 1e-3 and 1e-5 (float64), 1e-2 and
        1e-3 (float32).
      raise_on_failure: raise ``GradientCheckError`` listing the wrong elements
        instead of returning a failed report.

    Returns:
      A ``GradCheck``; ``str()`` of it is a readable verdict.
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    if not leaves:
        raise ValueError("check_grad needs at least one parameter leaf, got an empty pytree")
    for path, leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"params leaf {jax.tree_util.keystr(path) or '(root)'} has dtype "
                            f"{jnp.result_type(leaf)}; gradients need floating leaves")
    out = jax.eval_shape(fn, params, *args)
    if getattr(out, "shape", None) != ():
        raise ValueError(f"check_grad needs fn to return a scalar, got {out}")
    if eps is None:
        eps = 1e-6 if float64 else 5e-3
    default_rtol, default_atol = (1e-3, 1e-5) if float64 else (1e-2, 1e-3)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol

    analytic = np.asarray(ravel_pytree(jax.grad(fn)(params, *args))[0], np.float64)
    if float64:
        with jax.enable_x64(True):
            numeric, noise = _central_differences(fn, _to_float64(params), _to_float64(args), eps)
    else:
        numeric, noise = _central_differences(fn, params, args, eps)

    error = np.abs(analytic - numeric)
    bad = np.flatnonzero(~(error <= atol + rtol * np.abs(numeric) + noise))  # NaN is bad
    bad = bad[np.argsort(-np.nan_to_num(error[bad], nan=np.inf), kind="stable")]
    names, shapes, starts = _leaf_layout(leaves)
    mismatches = []
    for flat_index in bad:
        leaf = int(np.searchsorted(starts, flat_index, side="right")) - 1
        index = np.unravel_index(flat_index - starts[leaf], shapes[leaf]) if shapes[leaf] else ()
        mismatches.append(Mismatch(names[leaf], tuple(int(i) for i in index),
                                   float(analytic[flat_index]), float(numeric[flat_index])))
    report = GradCheck(ok=not mismatches, checked=int(analytic.size),
                       max_abs_error=float(np.max(error)), mismatches=tuple(mismatches))
    if raise_on_failure and not report.ok:
        raise GradientCheckError(str(report))
    return report


def _central_differences(fn, params, args, eps) -> tuple[np.ndarray, np.ndarray]:
    """Return the numeric gradient and, per element, the rounding noise it may carry."""
    flat, unravel = ravel_pytree(params)
    value_at = jax.vmap(lambda v: fn(unravel(v), *args))
    step = eps * jnp.maximum(1.0, jnp.abs(flat))
    size = min(_CHUNK, flat.size)

    @jax.jit
    def chunk(index):
        h = step[index]
        shift = jnp.zeros((size, flat.size), flat.dtype).at[jnp.arange(size), index].set(h)
        # Divide by the step actually taken, (p + h) - (p - h), not by 2h: p + h rounds.
        taken = (flat[index] + h) - (flat[index] - h)
        return (value_at(flat + shift) - value_at(flat - shift)) / taken, value_at(flat[None])[0]

    # Every chunk has the same size, so ``chunk`` compiles once; the last one is padded
    # by repeating the final index, and the padding is cut off below.
    results = [chunk(jnp.minimum(jnp.arange(start, start + size), flat.size - 1))
               for start in range(0, flat.size, size)]
    numeric = jnp.concatenate([r[0] for r in results])[: flat.size]
    value = results[0][1]
    # fn(p +- h) is only known to about machine epsilon * |fn(p)|; divided by the step,
    # that error is as large as a float32 difference gets on a large sum.
    noise = jnp.finfo(value.dtype).eps * jnp.maximum(1.0, jnp.abs(value)) / step
    return np.asarray(numeric, np.float64), np.asarray(noise, np.float64)


def _to_float64(tree):
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, tree)


def _leaf_layout(leaves):
    names = [jax.tree_util.keystr(path) or "(root)" for path, _ in leaves]
    shapes = [tuple(np.shape(leaf)) for _, leaf in leaves]
    sizes = [math.prod(shape) for shape in shapes]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return names, shapes, starts

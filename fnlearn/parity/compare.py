"""Comparators: how far one tensor (or pytree) is from another, naming the worst element."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np


class Comparison(NamedTuple):
    """How far ``actual`` is from ``expected``, and whether that is within tolerance.

    An element passes when ``|actual - expected| <= atol + rtol * |expected|`` (NumPy's
    ``allclose`` rule). ``worst_index`` is the element that uses most of that allowance
    (the largest absolute error when both tolerances are zero).
    """

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...]
    actual_at_worst: float
    expected_at_worst: float
    rtol: float
    atol: float
    passed: bool

    def __str__(self) -> str:
        where = f"[{', '.join(map(str, self.worst_index))}]"
        allowed = self.atol + self.rtol * abs(self.expected_at_worst)
        return (f"{self.name} {self.shape}: {'ok' if self.passed else 'MISMATCH'}, "
                f"max abs error {self.max_abs_error:.3g}, max rel error "
                f"{self.max_rel_error:.3g}; worst at {where}: actual "
                f"{self.actual_at_worst:.9g}, expected {self.expected_at_worst:.9g} "
                f"(allowed {allowed:.3g} there: rtol={self.rtol:g}, atol={self.atol:g})")


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy copy of a JAX array, a NumPy array, a torch tensor or a TensorFlow tensor."""
    if hasattr(value, "detach"):  # torch: leave the autograd graph and the device first
        value = value.detach().cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray | jax.Array):
        value = value.numpy()
    # Always a copy: torch's .numpy() shares memory with the tensor, so a later in-place
    # optimizer step would otherwise change the converted weights too.
    return np.array(value, copy=True)


def compare(name: str, actual: Any, expected: Any, *, rtol: float = 1e-5,
            atol: float = 0.0) -> Comparison:
    """Measures ``actual`` against ``expected`` element by element.

    Args:
      name: what is compared, for the report (``"dense_0/kernel"``).
      actual: the value under test (fnlearn's), any array-like.
      expected: the reference value (PyTorch's or Keras's), same shape.
      rtol: allowed error relative to ``|expected|``.
      atol: allowed absolute error, for elements near zero where relative error means little.

    Returns:
      A ``Comparison``. Errors are computed in float64, so they measure the inputs and not
      the rounding of the subtraction. NaN matches NaN and an infinity matches itself.

    Raises:
      ValueError: the shapes differ.
    """
    a = to_numpy(actual).astype(np.float64)
    e = to_numpy(expected).astype(np.float64)
    if a.shape != e.shape:
        raise ValueError(f"{name}: actual shape {a.shape} != expected shape {e.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        same_special = (np.isnan(a) & np.isnan(e)) | (np.isinf(a) & (a == e))
        abs_err = np.where(same_special, 0.0, np.abs(a - e))
        abs_err = np.where(np.isnan(abs_err), np.inf, abs_err)
        rel_err = np.where(abs_err == 0, 0.0, abs_err / np.abs(e))
        allowed = atol + rtol * np.abs(np.where(np.isfinite(e), e, 0.0))
        used = abs_err if atol == 0 and rtol == 0 else np.where(
            abs_err == 0, 0.0, abs_err / allowed)
    if a.size == 0:
        return Comparison(name, a.shape, 0.0, 0.0, (), math.nan, math.nan, rtol, atol, True)
    worst = np.unravel_index(int(np.argmax(used)), a.shape)
    return Comparison(
        name=name, shape=a.shape, max_abs_error=float(abs_err.max()),
        max_rel_error=float(rel_err.max()), worst_index=tuple(int(i) for i in worst),
        actual_at_worst=float(a[worst]), expected_at_worst=float(e[worst]),
        rtol=rtol, atol=atol, passed=bool(np.all(abs_err <= allowed)))


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(k) for k in path) or "<root>": leaf for path, leaf in leaves}


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def assert_close_trees(actual: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 0.0,
                       context: str = "") -> list[Comparison]:
    """Asserts that two pytrees hold the same tensors, each within tolerance.

    Args:
      actual: fnlearn's pytree (parameters, gradients, ...).
      expected: the reference pytree with the same structure (e.g. from ``params_from_torch``).
      rtol: allowed error relative to ``|expected|``, per element.
      atol: allowed absolute error, per element.
      context: where in a run this is (``"step 17"``), put at the head of the report.

    Returns:
      One ``Comparison`` per tensor, so a caller can record how close they were.

    Raises:
      AssertionError: the structures differ, or some tensor is out of tolerance; the message
        lists every offending tensor with its worst element.
    """
    head = f"{context}: " if context else ""
    actual_leaves, expected_leaves = _leaves_by_path(actual), _leaves_by_path(expected)
    missing = sorted(set(expected_leaves) - set(actual_leaves))
    extra = sorted(set(actual_leaves) - set(expected_leaves))
    if missing or extra:
        raise AssertionError(f"{head}pytrees differ in structure: missing from actual "
                             f"{missing}, not in expected {extra}")
    results, problems = [], []
    for path, expected_leaf in expected_leaves.items():
        try:
            result = compare(path, actual_leaves[path], expected_leaf, rtol=rtol, atol=atol)
        except ValueError as error:
            problems.append(f"  {error}")
            continue
        results.append(result)
        if not result.passed:
            problems.append(f"  {result}")
    if problems:
        raise AssertionError(
            f"{head}{len(problems)} of {len(expected_leaves)} tensors differ beyond "
            f"rtol={rtol:g}, atol={atol:g}:\n" + "\n".join(problems))
    return results


def assert_close(name: str, actual: Any, expected: Any, *, rtol: float = 1e-5,
                 atol: float = 0.0) -> Comparison:
    """``compare`` that raises: returns the ``Comparison`` when within tolerance.

    Raises:
      AssertionError: out of tolerance; the message is the comparison's report.
    """
    result = compare(name, actual, expected, rtol=rtol, atol=atol)
    if not result.passed:
        raise AssertionError(str(result))
    return result

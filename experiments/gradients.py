"""The article's gradient programs: d mean(x**2) / dx at x = [1, 2, 3], two ways.

PyTorch marks x with ``requires_grad=True``, runs the computation and calls
``z.backward()``; TensorFlow records the computation on a ``GradientTape``. In JAX
the gradient is a function transformation: ``jax.grad(f)`` is a new function
that returns df/dx, with nothing recorded and no ``.grad`` field to reset.

    python experiments/gradients.py
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from fnlearn.autodiff import GradCheck, check_grad


def mean_of_squares(x):
    """z = mean(x ** 2), the function both reference programs differentiate."""
    return jnp.mean(x**2)


def main(argv: list[str] | None = None) -> tuple[np.ndarray, GradCheck]:
    """Print the gradient in PyTorch's and TensorFlow's styles, then check it numerically.

    Args:
      argv: arguments, ``None`` for ``sys.argv[1:]``.

    Returns:
      The gradient as a NumPy array, and the gradient check's report.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/gradients", help="accepted for uniformity; unused")
    parser.parse_args(argv)

    x = jnp.array([1.0, 2.0, 3.0])
    grads = np.asarray(jax.grad(mean_of_squares)(x))
    # PyTorch prints x.grad as tensor([0.6667, 1.3333, 2.0000]): four decimals.
    print("grad (PyTorch style):", "[" + ", ".join(f"{g:.4f}" for g in grads) + "]")
    print("Gradients of x:", grads)  # TensorFlow's print of grads.numpy()

    report = check_grad(mean_of_squares, x)
    print(report)
    return grads, report


if __name__ == "__main__":
    main()

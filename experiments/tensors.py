"""The article's tensor program: an array, its NumPy view, and the devices it can live on.

PyTorch's ``x.numpy()`` shares memory with the CPU tensor; JAX's ``np.asarray(x)``
does the same on CPU, read-only, because JAX arrays are immutable.

    python experiments/tensors.py
"""

import argparse

import jax.numpy as jnp
import numpy as np

from fnlearn.tensors import (
    from_torch,
    list_devices,
    shares_memory,
    to_device,
    to_numpy,
    to_torch,
)


def main(argv: list[str] | None = None) -> np.ndarray:
    """Create [1, 2, 3], convert it to NumPy, show where it lives, round-trip through PyTorch.

    Args:
      argv: arguments, ``None`` for ``sys.argv[1:]``.

    Returns:
      The NumPy array.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/tensors", help="accepted for uniformity; unused")
    parser.parse_args(argv)

    x = jnp.array([1, 2, 3])
    numpy_array = to_numpy(x)
    print("jax array:", x)
    print("numpy array:", numpy_array)
    shared = shares_memory(numpy_array, x)
    print(f"numpy array shares memory with the jax array: {'yes' if shared else 'no (a copy)'}"
          f"; writeable: {numpy_array.flags.writeable}")
    print("devices:", ", ".join(f"{d.platform}:{d.id} ({d.device_kind})" for d in list_devices()))

    # The round trip starts from the CPU copy: the CPU build of PyTorch cannot take GPU memory.
    x = to_device(x, "cpu")
    try:
        tensor = to_torch(x)
    except ImportError:
        print("pytorch: not installed, skipping the DLPack round trip")
        return numpy_array
    back = from_torch(tensor)
    print("pytorch array:", tensor)
    same_buffer = back.unsafe_buffer_pointer() == x.unsafe_buffer_pointer()
    print("back in jax via DLPack:", back, "(zero-copy)" if same_buffer else "(copied)")
    return numpy_array


if __name__ == "__main__":
    main()

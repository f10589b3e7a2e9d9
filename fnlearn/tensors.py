"""Arrays, NumPy and devices: where the data lives and when it is copied.

A ``jax.Array`` is an immutable buffer on one device (or sharded over several).
Most of what a PyTorch user reaches for already exists and is documented here
rather than wrapped:

    jnp.asarray(np_array)        # NumPy -> JAX: copies onto the default device
    jnp.array(x, dtype=...)      # always copies
    x.dtype, x.shape, x.devices()
    jax.device_get(tree)         # pytree of arrays -> pytree of NumPy arrays
    x.block_until_ready()        # JAX dispatches asynchronously; wait for the result

What is added below makes the copy-or-share question explicit: ``to_numpy``,
``shares_memory``, ``list_devices``, ``to_device``, and DLPack exchange with PyTorch
(``to_torch``, ``from_torch``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def to_numpy(x: jax.Array) -> np.ndarray:
    """Return ``x`` as a NumPy array, without a copy where JAX allows it.

    On the CPU backend the result is a read-only view of the JAX buffer (JAX
    arrays are immutable, so NumPy may not write into them); ``shares_memory``
    tells. On GPU/TPU this copies device memory to the host, waiting for any
    pending computation. For a writable array use ``np.array(x)``, which copies.

    Args:
      x: a JAX array (NumPy arrays and Python scalars pass through ``np.asarray``).

    Returns:
      A NumPy array with the same shape and dtype.
    """
    if isinstance(x, jax.core.Tracer):
        raise TypeError("to_numpy got a traced value: inside jit/grad arrays have no data yet; "
                        "call it outside the transformed function")
    return np.asarray(x)


def shares_memory(view: np.ndarray, array: jax.Array) -> bool:
    """Tell whether the NumPy array ``view`` points into the memory of the JAX array ``array``.

    Args:
      view: a NumPy array, e.g. from ``to_numpy(array)``.
      array: a JAX array on a single device.

    Returns:
      True when the two overlap in memory (writing to one would change the
      other), False when ``view`` is a copy.
    """
    if not isinstance(view, np.ndarray):
        raise TypeError(f"view must be a numpy.ndarray, got {type(view).__name__}")
    if not isinstance(array, jax.Array) or len(array.devices()) != 1:
        raise TypeError("array must be a JAX array on a single device")
    if next(iter(array.devices())).platform != "cpu":
        return False  # host memory can never alias accelerator memory
    start = array.unsafe_buffer_pointer()
    low, high = np.lib.array_utils.byte_bounds(view)
    return view.nbytes > 0 and low < start + array.nbytes and start < high


def list_devices() -> list[jax.Device]:
    """Return the devices of every available backend, default backend first.

    ``jax.devices()`` lists only the default backend (the GPUs when there are
    any); this adds the CPU so that a listing shows every place data can live.

    Returns:
      ``jax.Device`` objects; ``d.platform`` is "cpu", "gpu" or "tpu", ``d.id`` its index.
    """
    found = list(jax.devices())
    if found[0].platform != "cpu":
        found += jax.devices("cpu")
    return found


def to_device(x: Any, device: jax.Device | str) -> Any:
    """Copy an array (or pytree of arrays) to ``device``; a thin, explicit ``jax.device_put``.

    Args:
      x: array or pytree of arrays (NumPy or JAX).
      device: a ``jax.Device``, or a string "cpu", "gpu", "tpu", optionally with an
        index: "gpu:1". A bare platform means its first device.

    Returns:
      The same structure, committed to that device. A no-op for arrays already there.
    """
    if isinstance(device, str):
        device = _parse_device(device)
    return jax.device_put(x, device)


def _parse_device(spec: str) -> jax.Device:
    platform, _, index = spec.partition(":")
    try:
        candidates = jax.devices(platform)
    except RuntimeError as error:
        raise ValueError(f"no {platform!r} backend here; devices are {list_devices()}") from error
    if index and (not index.isdigit() or int(index) >= len(candidates)):
        raise ValueError(f"device {spec!r} does not exist; {platform} devices: {candidates}")
    return candidates[int(index or 0)]


def to_torch(x: jax.Array):
    """Hand a JAX array to PyTorch through DLPack, zero-copy on the same device.

    The tensor aliases JAX's buffer: JAX assumes its arrays never change, so
    do not modify the tensor in place (clone it first if you must).

    Args:
      x: a JAX array.

    Returns:
      A ``torch.Tensor`` on the matching device (CPU tensor for a CPU array).
    """
    torch = _import_torch()
    return torch.from_dlpack(x)


def from_torch(tensor) -> jax.Array:
    """Take a PyTorch tensor into JAX through DLPack.

    Zero-copy when the tensor is contiguous and its data is suitably aligned;
    otherwise (e.g. a slice with an offset) JAX copies.

    Args:
      tensor: a ``torch.Tensor`` on CPU or GPU, not requiring grad.

    Returns:
      A ``jax.Array`` on the matching device.
    """
    _import_torch()
    if tensor.requires_grad:
        raise ValueError("from_torch got a tensor that requires grad; pass tensor.detach()")
    return jax.dlpack.from_dlpack(tensor)


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError("PyTorch is not installed: `pip install torch` (the CPU build is "
                          "enough) to exchange arrays with it") from error
    return torch

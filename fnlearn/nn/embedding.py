"""``Embedding``: integer ids to learned vectors (Keras ``Embedding``, PyTorch ``nn.Embedding``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnlearn.nn import precision
from fnlearn.nn.core import Layer, constructor


@constructor
def Embedding(input_dim: int, output_dim: int, *, init: str = "keras",
              padding_idx: int | None = None, dtype=None, param_dtype="float32") -> Layer:
    """Looks up row ``i`` of a ``(input_dim, output_dim)`` table for each id ``i``.

    Inputs are integer ids of any per-example shape ``s``; outputs have shape
    ``(*s, output_dim)``. An id outside ``[0, input_dim)`` gives NaN (a loud non-finite
    loss under ``fit``) rather than a silently clipped row.

    Args:
      input_dim: the number of ids (PyTorch's ``num_embeddings``).
      output_dim: the vector size (PyTorch's ``embedding_dim``).
      init: ``"keras"`` (U(-0.05, 0.05), Keras's ``"uniform"``) or ``"torch"`` (N(0, 1)).
      padding_idx: PyTorch's: this id's row starts at zero and gets no gradient.
      dtype: the output vectors' dtype (None: the table's); rows are looked up, then
        rounded, so the table stays ``param_dtype`` (``fnlearn.nn.precision``).
      param_dtype: the table's dtype.

    The table is ``params["embeddings"]`` (Keras's name; PyTorch's ``weight``).
    """
    for name, value in (("input_dim", input_dim), ("output_dim", output_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"Embedding {name} must be a positive int, got {value!r}")
    if init not in ("keras", "torch"):
        raise ValueError(f"Embedding init must be 'keras' or 'torch', got {init!r}")
    if padding_idx is not None and (isinstance(padding_idx, bool) or not isinstance(
            padding_idx, int) or not -input_dim <= padding_idx < input_dim):
        raise ValueError(f"Embedding padding_idx must be an id in [-{input_dim}, {input_dim}), "
                         f"got {padding_idx!r}")
    pad = None if padding_idx is None else padding_idx % input_dim
    out_dtype = precision.check_dtype(dtype, "Embedding dtype")
    stored = precision.check_dtype(param_dtype, "Embedding param_dtype")

    def init_fn(key, input_shape):
        shape = (input_dim, output_dim)
        if init == "keras":
            table = jax.random.uniform(key, shape, jnp.float32, -0.05, 0.05)
        else:
            table = jax.random.normal(key, shape, jnp.float32)
        if pad is not None:
            table = table.at[pad].set(0.0)
        return (*input_shape, output_dim), {"embeddings": table.astype(stored)}

    def apply_fn(params, x, *, key=None, train=False):
        table = params["embeddings"]
        if pad is not None:
            table = table.at[pad].set(jax.lax.stop_gradient(table[pad]))
        ids = x if jnp.issubdtype(x.dtype, jnp.integer) else x.astype(jnp.int32)
        rows = jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)
        return rows if out_dtype is None else rows.astype(out_dtype)

    return Layer(init_fn, apply_fn, "embedding",
                 {"input_dim": input_dim, "output_dim": output_dim, "init": init,
                  "padding_idx": pad})

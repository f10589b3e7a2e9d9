"""``pad_sequences``: sequences of different lengths as one padded array and their lengths."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_sequences(sequences: Sequence, maxlen: int | None = None, *, value: float = 0.0,
                  padding: str = "post", dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Pads sequences (arrays ``(length, *features)``) into ``(batch, time, *features)``.

    The result feeds a recurrent layer as ``{"inputs": padded, "lengths": lengths}``
    (PyTorch's ``pad_sequence`` + ``pack_padded_sequence``), or with ``value`` as the
    layer's ``mask_value`` (Keras's ``pad_sequences`` + ``Masking``).

    Args:
      sequences: arrays (or lists) whose first axis is time; the other axes must agree.
      maxlen: the padded length (default: the longest); longer sequences are refused.
      value: the padding value.
      padding: ``"post"`` (real steps first, as PyTorch; what ``lengths`` describes) or
        ``"pre"`` (Keras's default: padding first; pass a mask then, not lengths).
      dtype: the result's dtype (default: the sequences' common dtype).

    Returns:
      ``(padded, lengths)``: the array and each sequence's length (int32).

    Raises:
      ValueError: no sequences, sequences whose feature axes differ, one longer than
        ``maxlen``, or an unknown ``padding``.
    """
    if padding not in ("post", "pre"):
        raise ValueError(f"pad_sequences padding must be 'post' or 'pre', got {padding!r}")
    arrays = [np.asarray(s) for s in sequences]
    if not arrays:
        raise ValueError("pad_sequences needs at least one sequence")
    features = {a.shape[1:] for a in arrays}
    if len(features) != 1 or any(a.ndim == 0 for a in arrays):
        raise ValueError(f"pad_sequences: every sequence must be (length, *features) with the "
                         f"same features, got shapes {sorted({a.shape for a in arrays})}")
    lengths = np.array([len(a) for a in arrays], np.int32)
    time = int(lengths.max()) if maxlen is None else int(maxlen)
    if lengths.max() > time:
        raise ValueError(f"pad_sequences: a sequence of length {int(lengths.max())} is longer "
                         f"than maxlen {time}")
    dtype = np.result_type(*arrays) if dtype is None else dtype
    padded = np.full((len(arrays), time, *features.pop()), value, dtype)
    for row, a in zip(padded, arrays):
        if padding == "post":
            row[:len(a)] = a
        elif len(a):
            row[-len(a):] = a
    return padded, lengths

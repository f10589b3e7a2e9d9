"""Training-only augmentation (Keras's preprocessing layers): ``RandomFlip``, ``RandomCrop``.

Active only when ``apply`` gets ``train=True``; at inference they return their input,
so an exported or evaluated model never augments. Their randomness comes from the
layer's key (``fit`` folds it from the step's key), so the same seed gives the same
augmented batches, bit for bit. Each example is augmented independently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnlearn.nn.core import Layer, constructor

_FLIPS = {"horizontal": (False, True), "vertical": (True, False),
          "horizontal_and_vertical": (True, True)}


def _check_image(layer: str, input_shape) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"{layer} needs per-example inputs (height, width, channels), got "
                         f"shape {tuple(input_shape)}")


def _needs_key(layer: str, key) -> None:
    if key is None:
        raise ValueError(f"{layer} with train=True needs a PRNG key: apply(..., key=key)")


@constructor
def RandomFlip(mode: str = "horizontal_and_vertical") -> Layer:
    """Mirrors each training image with probability 1/2 per direction (Keras ``RandomFlip``;
    torchvision's ``RandomHorizontalFlip`` is ``mode="horizontal"``)."""
    if mode not in _FLIPS:
        raise ValueError(f"RandomFlip mode must be one of {sorted(_FLIPS)}, got {mode!r}")
    vertical, horizontal = _FLIPS[mode]

    def init_fn(key, input_shape):
        _check_image("RandomFlip", input_shape)
        return tuple(input_shape), {}

    def apply_fn(params, x, *, key=None, train=False):
        if not train:
            return x
        _needs_key("RandomFlip", key)
        flip_rows, flip_cols = jax.random.bernoulli(key, 0.5, (2, x.shape[0], 1, 1, 1))
        if vertical:
            x = jnp.where(flip_rows, jnp.flip(x, 1), x)
        if horizontal:
            x = jnp.where(flip_cols, jnp.flip(x, 2), x)
        return x

    return Layer(init_fn, apply_fn, "random_flip", {"mode": mode})


@constructor
def RandomCrop(padding: int = 4) -> Layer:
    """Pads each training image with ``padding`` zeros per side, then crops it back to its size
    at a random offset (torchvision's ``RandomCrop(size, padding=4)``, the CIFAR recipe):
    a random shift of up to ``padding`` pixels each way."""
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"RandomCrop padding must be a non-negative int, got {padding!r}")

    def init_fn(key, input_shape):
        _check_image("RandomCrop", input_shape)
        return tuple(input_shape), {}

    def apply_fn(params, x, *, key=None, train=False):
        if not train or padding == 0:
            return x
        _needs_key("RandomCrop", key)
        n, h, w, c = x.shape
        padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

        def crop(image, offset):
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

        return jax.vmap(crop)(padded, offsets)

    return Layer(init_fn, apply_fn, "random_crop", {"padding": padding})

"""``TransformerEncoderLayer``: PyTorch's ``nn.TransformerEncoderLayer`` as one fnlearn layer.

Post-norm (``norm_first=False``, PyTorch's default, the original Transformer)::

    x = norm1(x + dropout1(self_attn(x)))
    x = norm2(x + dropout2(linear2(dropout(activation(linear1(x))))))

Pre-norm (``norm_first=True``, ViT, GPT-2)::

    x = x + dropout1(self_attn(norm1(x)))
    x = x + dropout2(linear2(dropout(activation(linear1(norm2(x))))))

Built from fnlearn's own ``MultiHeadAttention``, ``Dense`` and ``LayerNorm``; the
parameters are theirs under PyTorch's submodule names (``self_attn``, ``linear1``,
``linear2``, ``norm1``, ``norm2``). In Keras the block is a functional graph of
``MultiHeadAttention``, ``Dropout``, ``Add``, ``LayerNormalization`` and ``Dense``
layers (``fnlearn.parity`` builds and reads it).

With a 16-bit ``dtype`` (``nn.with_policy(model, "mixed_bfloat16")``) the attention's
products and the two feed-forward ``Dense`` layers multiply 16-bit operands and sum in
float32; the residual sums, the LayerNorms and the softmax are float32 inside the
block, and its output is rounded once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnlearn.nn import precision
from fnlearn.nn.attention import MultiHeadAttention, attend
from fnlearn.nn.core import Layer, constructor
from fnlearn.nn.dense import Dense, Dropout
from fnlearn.nn.norm import LayerNorm

_KEYS = ("inputs", "key_padding_mask", "attn_mask", "attention_mask")


@constructor
def TransformerEncoderLayer(d_model: int, nhead: int, dim_feedforward: int = 2048,
                            dropout: float = 0.1, activation: str = "relu",
                            layer_norm_eps: float = 1e-5, norm_first: bool = False, *,
                            bias: bool = True, causal: bool = False,
                            time_major: bool = False, dtype=None,
                            param_dtype="float32") -> Layer:
    """Self-attention and a feed-forward block, each with a residual and a LayerNorm.

    Arguments as PyTorch's (``batch_first=True`` is the default here: ``time_major=True``
    takes PyTorch's default ``(length, batch, d_model)``). Inputs: an array, or a dict
    ``{"inputs": x, "key_padding_mask": m, "attn_mask": a}`` (PyTorch's
    ``src_key_padding_mask``, ``src_mask``; Keras's ``attention_mask`` too, see
    ``fnlearn.nn.attention``). ``causal``: PyTorch's ``is_causal``.

    Args:
      d_model: features of the tokens; ``nhead`` must divide it.
      nhead: attention heads.
      dim_feedforward: the feed-forward block's hidden width.
      dropout: every dropout's rate (attention weights included), in training.
      activation: ``"relu"`` or ``"gelu"`` (or any name of ``ACTIVATIONS``).
      layer_norm_eps: the LayerNorms' epsilon.
      norm_first: pre-norm instead of post-norm.
      bias: biases in the projections, the feed-forward layers and the LayerNorms.
      dtype: the dtype it computes in (``fnlearn.nn.precision``): None follows the
        inputs and parameters; ``"bfloat16"`` multiplies in bfloat16 with float32 sums
        and returns bfloat16.
      param_dtype: the parameters' dtype.
    """
    for argument, number in (("d_model", d_model), ("nhead", nhead),
                             ("dim_feedforward", dim_feedforward)):
        if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
            raise ValueError(f"TransformerEncoderLayer {argument} must be a positive int, got "
                             f"{number!r}")
    if d_model % nhead:
        raise ValueError(f"TransformerEncoderLayer nhead {nhead} must divide d_model {d_model}")
    compute = precision.check_dtype(dtype, "TransformerEncoderLayer dtype")
    stored = precision.check_dtype(param_dtype, "TransformerEncoderLayer param_dtype")
    attention = MultiHeadAttention(nhead, d_model // nhead, dropout=dropout, use_bias=bias,
                                   causal=causal, init="torch", param_dtype=stored)

    def feed_forward_layers(dtype):
        return (Dense(dim_feedforward, activation, use_bias=bias, init="torch", dtype=dtype,
                      param_dtype=stored),
                Dense(d_model, use_bias=bias, init="torch", dtype=dtype, param_dtype=stored))

    linear1, linear2 = feed_forward_layers(compute)
    # No dtype: the LayerNorms return the dtype they get, float32 inside the block.
    norm = LayerNorm(epsilon=layer_norm_eps, center=bias, convention="torch",
                     param_dtype=stored)
    drop = Dropout(dropout)
    parts = {"self_attn": attention, "linear1": linear1, "linear2": linear2, "norm1": norm,
             "norm2": norm}

    def init_fn(key, input_shape):
        shape = input_shape.get("inputs") if isinstance(input_shape, dict) else input_shape
        if shape is None or len(shape) != 2 or shape[-1] != d_model:
            raise ValueError(f"TransformerEncoderLayer needs per-example inputs (length, "
                             f"{d_model}), got shape {shape}")
        params = {}
        for (name, part), part_key in zip(parts.items(), jax.random.split(key, len(parts))):
            params[name] = part.init(part_key, (shape[0], dim_feedforward)
                                     if name == "linear2" else shape)[1]
        return tuple(shape), params

    def apply_fn(params, x, *, key=None, train=False):
        masks = {}
        if isinstance(x, dict):
            if "inputs" not in x or set(x) - set(_KEYS):
                raise ValueError(f"TransformerEncoderLayer takes a dict with keys {_KEYS} "
                                 f"('inputs' required), got keys {sorted(x)}")
            masks = {k: x[k] for k in _KEYS[1:] if x.get(k) is not None}
            x = x["inputs"]
        x = jnp.asarray(x)
        dtype = precision.compute_dtype(compute, x, params["linear1"]["kernel"])
        half = precision.is_half(dtype)
        if not half:
            params = jax.tree.map(lambda p: p.astype(dtype), params)
        # A 16-bit block keeps its residual sums in float32 and rounds its output once.
        x = x.astype(jnp.float32 if half else dtype)
        if x.ndim != 3 or x.shape[-1] != d_model:
            raise ValueError(f"TransformerEncoderLayer inputs must be (batch, length, {d_model})"
                             f", got shape {tuple(x.shape)}")
        if time_major:
            x = jnp.swapaxes(x, 0, 1)
        # The feed-forward layers compute in the block's dtype, resolved as the attention's.
        linear1, linear2 = feed_forward_layers(dtype)
        keys = (jax.random.split(key, 4) if key is not None and train and dropout > 0
                else [None] * 4)

        def self_attention(h):
            out, _ = attend(params["self_attn"], h, h, h, masks, heads=nhead, causal=causal,
                            dropout=dropout, dropout_key=keys[0], train=train,
                            layer="TransformerEncoderLayer", dtype=dtype)
            return drop.apply({}, out, key=keys[1], train=train)

        def feed_forward(h):
            h = linear1.apply(params["linear1"], h)
            h = drop.apply({}, h, key=keys[2], train=train)
            h = linear2.apply(params["linear2"], h)
            return drop.apply({}, h, key=keys[3], train=train)

        def norm1(h):
            return norm.apply(params["norm1"], h)

        def norm2(h):
            return norm.apply(params["norm2"], h)

        if norm_first:
            x = x + self_attention(norm1(x))
            x = x + feed_forward(norm2(x))
        else:
            x = norm1(x + self_attention(x))
            x = norm2(x + feed_forward(x))
        x = x.astype(dtype) if half else x
        return jnp.swapaxes(x, 0, 1) if time_major else x

    return Layer(init_fn, apply_fn, "transformer_encoder",
                 {"d_model": d_model, "nhead": nhead, "dim_feedforward": dim_feedforward,
                  "dropout": dropout, "activation": activation,
                  "layer_norm_eps": layer_norm_eps, "norm_first": norm_first, "bias": bias,
                  "causal": causal, "time_major": time_major})

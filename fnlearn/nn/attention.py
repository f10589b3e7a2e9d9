"""``MultiHeadAttention`` (Keras ``MultiHeadAttention``, PyTorch ``nn.MultiheadAttention``).

Parameters follow Keras's per-projection kernels: ``query``/``key`` ``kernel``
``(features, heads, key_dim)`` and ``bias`` ``(heads, key_dim)``, ``value`` the same with
``value_dim``, ``output`` ``kernel`` ``(heads, value_dim, output_dim)`` and ``bias``
``(output_dim,)``. PyTorch packs the three input projections into one
``in_proj_weight`` ``(3 * embed_dim, embed_dim)`` (rows: query, key, value; head ``h``
is rows ``h * head_dim`` to ``(h + 1) * head_dim`` of each), which the converters
split and reshape.

Masks, each with its own framework's meaning (a dict input names them):

* ``attention_mask`` (Keras): ``(batch, queries, keys)`` or ``(queries, keys)``,
  true where a query MAY attend;
* ``key_padding_mask`` (PyTorch): ``(batch, keys)``, bool true where a key is padding
  (ignored), or float added to the scores;
* ``attn_mask`` (PyTorch): ``(queries, keys)`` or ``(batch * heads, queries, keys)``,
  bool true where attention is NOT allowed, or float added to the scores;
* ``causal=True``: query ``i`` attends to keys ``j <= i`` (Keras's ``use_causal_mask``,
  PyTorch's ``is_causal``).

A disallowed score becomes -1e9 before the softmax, as Keras does, so a query with no
key left gets uniform weights rather than PyTorch's NaN.

``dtype``/``param_dtype`` as ``Dense``'s (``fnlearn.nn.precision``): with a 16-bit
``dtype`` the four projections, the scores ``q . k`` and the weighted sum of the values
take 16-bit operands and sum in float32; biases, scores, masks and the softmax are
float32, and the outputs (and weights) are rounded once at the end.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fnlearn.nn import precision
from fnlearn.nn.core import Layer, constructor

_KEYS = ("query", "value", "key", "attention_mask", "key_padding_mask", "attn_mask")
_LARGE_NEGATIVE = -1e9


def _glorot(key, shape):
    """Keras's glorot-uniform for an einsum kernel: fans from its last two axes."""
    receptive = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def _torch_uniform(key, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def split_inputs(x, layer: str = "MultiHeadAttention") -> tuple:
    """``(query, value, key, masks)`` from an array, a ``(query, value[, key])`` tuple or a dict."""
    masks = {}
    if isinstance(x, dict):
        unknown = set(x) - set(_KEYS)
        if "query" not in x or unknown:
            raise ValueError(f"{layer} takes a dict with keys {_KEYS} ('query' required), got "
                             f"keys {sorted(x)}")
        masks = {k: x[k] for k in _KEYS[3:] if x.get(k) is not None}
        query, value, key = x["query"], x.get("value"), x.get("key")
    elif isinstance(x, list | tuple):
        if len(x) not in (2, 3):
            raise ValueError(f"{layer} takes (query, value) or (query, value, key), got "
                             f"{len(x)} inputs")
        query, value, key = (*x, None) if len(x) == 2 else x
    else:
        query, value, key = x, None, None
    value = query if value is None else value
    key = value if key is None else key
    return query, value, key, masks


def _allowed(masks: dict, batch: int, heads: int, queries: int, keys: int, causal: bool,
             layer: str):
    """``(allowed (batch, heads|1, queries, keys) bool or None, additive float or None)``."""
    allowed, additive = None, None

    def both(mask):
        nonlocal allowed
        allowed = mask if allowed is None else allowed & mask

    def add(values):
        nonlocal additive
        additive = values if additive is None else additive + values

    if "attention_mask" in masks:
        mask = jnp.asarray(masks["attention_mask"])
        if mask.shape not in ((batch, queries, keys), (queries, keys)):
            hint = (": a (batch, keys) padding mask is PyTorch's key_padding_mask (true marks "
                    "padding)" if mask.shape == (batch, keys) else "")
            raise ValueError(f"{layer} attention_mask must be (batch, queries, keys) = "
                             f"{(batch, queries, keys)} or (queries, keys), true where a query "
                             f"may attend; got shape {tuple(mask.shape)}{hint}")
        if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.integer)):
            raise ValueError(f"{layer} attention_mask must be bool (true: may attend), got "
                             f"{mask.dtype}; an additive float mask is PyTorch's attn_mask")
        both((mask != 0).reshape(-1, 1, queries, keys))
    if "key_padding_mask" in masks:
        mask = jnp.asarray(masks["key_padding_mask"])
        if mask.shape != (batch, keys):
            swapped = (": batch and keys look swapped" if mask.shape == (keys, batch) else "")
            raise ValueError(f"{layer} key_padding_mask must be (batch, keys) = "
                             f"{(batch, keys)}, got shape {tuple(mask.shape)}{swapped}")
        if mask.dtype == jnp.bool_:
            both(~mask[:, None, None, :])
        elif jnp.issubdtype(mask.dtype, jnp.floating):
            add(mask[:, None, None, :])
        else:
            raise ValueError(f"{layer} key_padding_mask must be bool (true marks padding, as "
                             f"PyTorch) or float (added to the scores), got {mask.dtype}: an "
                             "int mask is ambiguous (Keras's 1 keeps, PyTorch's True drops)")
    if "attn_mask" in masks:
        mask = jnp.asarray(masks["attn_mask"])
        if mask.shape == (queries, keys):
            mask = mask[None, None]
        elif mask.shape == (batch * heads, queries, keys):
            mask = mask.reshape(batch, heads, queries, keys)
        else:
            raise ValueError(f"{layer} attn_mask must be (queries, keys) = {(queries, keys)} or "
                             f"(batch * heads, queries, keys) = {(batch * heads, queries, keys)}"
                             f", got shape {tuple(mask.shape)}")
        if mask.dtype == jnp.bool_:
            both(~mask)
        elif jnp.issubdtype(mask.dtype, jnp.floating):
            add(mask)
        else:
            raise ValueError(f"{layer} attn_mask must be bool (true: NOT allowed, as PyTorch) or "
                             f"float (added to the scores), got {mask.dtype}")
    if causal:
        both(jnp.tril(jnp.ones((queries, keys), jnp.bool_))[None, None])
    return allowed, additive


def attend(params: dict, query, value, key, masks: dict, *, heads: int, causal: bool,
           dropout: float, dropout_key, train: bool, layer: str = "MultiHeadAttention",
           dtype=None):
    """Multi-head attention of ``query`` on ``key``/``value``: ``(outputs, weights)``.

    ``weights`` is ``(batch, heads, queries, keys)``, after masking and softmax (before
    dropout). A 16-bit ``dtype`` multiplies in it and returns both in float32 (None:
    the products in their operands' dtype).
    """
    for argument, value_ in (("query", query), ("value", value), ("key", key)):
        if value_.ndim != 3:
            raise ValueError(f"{layer} {argument} must be (batch, length, features), got shape "
                             f"{tuple(value_.shape)}")
    expected = params["query"]["kernel"].shape[0]
    if query.shape[-1] != expected:
        raise ValueError(f"{layer} was built for queries of {expected} features, got shape "
                         f"{tuple(query.shape)}")
    if key.shape[:2] != value.shape[:2]:
        raise ValueError(f"{layer} key {tuple(key.shape)} and value {tuple(value.shape)} must "
                         "have the same batch and length")

    half = dtype is not None and precision.is_half(dtype)

    def times(subscripts, a, b):
        return precision.einsum(subscripts, a, b, dtype) if half else jnp.einsum(subscripts, a, b)

    def biased(y, part):
        return y + part["bias"].astype(y.dtype) if "bias" in part else y

    def project(name, x):
        return biased(times("bsd,dhk->bshk", x, params[name]["kernel"]), params[name])

    q, k, v = project("query", query), project("key", key), project("value", value)
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    scores = times("bthk,bshk->bhts", q, k)
    allowed, additive = _allowed(masks, query.shape[0], heads, query.shape[1], key.shape[1],
                                 causal, layer)
    if additive is not None:
        scores = scores + additive
    if allowed is not None:
        scores = jnp.where(allowed, scores, jnp.asarray(_LARGE_NEGATIVE, scores.dtype))
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(scores.dtype)
    dropped = weights
    if train and dropout > 0.0:
        if dropout_key is None:
            raise ValueError(f"{layer} with dropout and train=True needs a PRNG key")
        keep = jax.random.bernoulli(dropout_key, jnp.float32(1.0 - dropout), weights.shape)
        dropped = jnp.where(keep, weights / (1.0 - dropout), jnp.zeros_like(weights))
    attended = times("bhts,bshv->bthv", dropped, v)
    out = biased(times("bthv,hvd->btd", attended, params["output"]["kernel"]), params["output"])
    return out, weights


def init_attention(key, query_dim: int, value_dim_in: int, key_dim_in: int, heads: int,
                   key_dim: int, value_dim: int, output_dim: int, use_bias: bool,
                   init: str) -> dict:
    """Initial weights: Keras's (glorot-uniform kernels, zero biases) or PyTorch's (Xavier
    on the packed input projection, the output Linear's uniform, zero biases)."""
    keys = jax.random.split(key, 4)
    shapes = {"query": (query_dim, heads, key_dim), "key": (key_dim_in, heads, key_dim),
              "value": (value_dim_in, heads, value_dim), "output": (heads, value_dim,
                                                                    output_dim)}
    params = {}
    for (name, shape), k in zip(shapes.items(), keys):
        if init == "keras":
            kernel = _glorot(k, shape)
        elif name == "output":
            kernel = _torch_uniform(k, shape, heads * value_dim)
        else:
            # PyTorch's xavier_uniform on the packed (3 * embed, embed) in_proj_weight.
            fan_in, fan_out = shape[0], 3 * heads * shape[-1]
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            kernel = jax.random.uniform(k, shape, jnp.float32, -limit, limit)
        params[name] = {"kernel": kernel}
        if use_bias:
            params[name]["bias"] = jnp.zeros(shape[1:] if name != "output" else shape[-1:],
                                             jnp.float32)
    return params


@constructor
def MultiHeadAttention(num_heads: int, key_dim: int, value_dim: int | None = None, *,
                       dropout: float = 0.0, use_bias: bool = True,
                       output_dim: int | None = None, causal: bool = False,
                       init: str = "keras", return_attention_scores: bool = False,
                       dtype=None, param_dtype="float32") -> Layer:
    """Scaled dot-product attention with ``num_heads`` heads (Keras ``MultiHeadAttention``).

    Inputs: one array ``(batch, length, features)`` attends to itself; a tuple
    ``(query, value)`` or ``(query, value, key)`` (Keras's call order; ``key`` defaults to
    ``value``); or a dict with ``"query"``, optional ``"value"``, ``"key"`` and the masks
    of the module docstring.

    Args:
      num_heads: heads.
      key_dim: size of each head's queries and keys (PyTorch: ``embed_dim // num_heads``).
      value_dim: size of each head's values (default ``key_dim``).
      dropout: dropout on the attention weights, in training.
      use_bias: biases on the four projections (PyTorch's ``bias``).
      output_dim: output features (default: the query's).
      causal: each query attends only to keys at or before its position.
      init: ``"keras"`` or ``"torch"`` initialization.
      return_attention_scores: return ``(outputs, weights)``, weights
        ``(batch, heads, queries, keys)``.
      dtype: the dtype it computes in (``fnlearn.nn.precision``): None follows the
        inputs and parameters; ``"bfloat16"`` multiplies in bfloat16 with float32 sums,
        takes the softmax in float32, and returns bfloat16.
      param_dtype: the parameters' dtype.
    """
    for argument, number in (("num_heads", num_heads), ("key_dim", key_dim)):
        if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
            raise ValueError(f"MultiHeadAttention {argument} must be a positive int, got "
                             f"{number!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"MultiHeadAttention dropout must be in [0, 1), got {dropout!r}")
    if init not in ("keras", "torch"):
        raise ValueError(f"MultiHeadAttention init must be 'keras' or 'torch', got {init!r}")
    compute = precision.check_dtype(dtype, "MultiHeadAttention dtype")
    stored = precision.check_dtype(param_dtype, "MultiHeadAttention param_dtype")
    values = value_dim or key_dim

    def init_fn(key, input_shape):
        if isinstance(input_shape, dict):
            shapes = (input_shape.get("query"), input_shape.get("value"),
                      input_shape.get("key"))
            if shapes[0] is None:
                raise ValueError("MultiHeadAttention takes a dict with a 'query' key")
        elif isinstance(input_shape, tuple) and input_shape and isinstance(input_shape[0],
                                                                            tuple):
            shapes = (*input_shape, None) if len(input_shape) == 2 else input_shape
        else:
            shapes = (input_shape, None, None)
        query = shapes[0]
        value = shapes[1] or query
        key_shape = shapes[2] or value
        for argument, shape in (("query", query), ("value", value), ("key", key_shape)):
            if len(shape) != 2:
                raise ValueError(f"MultiHeadAttention needs per-example {argument} (length, "
                                 f"features), got shape {tuple(shape)}")
        out_dim = output_dim or query[-1]
        params = init_attention(key, query[-1], value[-1], key_shape[-1], num_heads, key_dim,
                                values, out_dim, use_bias, init)
        params = jax.tree.map(lambda p: p.astype(stored), params)
        out = (query[0], out_dim)
        if return_attention_scores:
            return (out, (num_heads, query[0], key_shape[0])), params
        return out, params

    def apply_fn(params, x, *, key=None, train=False):
        query, value, key_, masks = split_inputs(x)
        query, value, key_ = (jnp.asarray(a) for a in (query, value, key_))
        dtype = precision.compute_dtype(compute, query, value, key_, params["query"]["kernel"])
        half = precision.is_half(dtype)
        if not half:
            query, value, key_ = (a.astype(dtype) for a in (query, value, key_))
            params = jax.tree.map(lambda p: p.astype(dtype), params)
        out, weights = attend(params, query, value, key_,
                              masks, heads=num_heads, causal=causal, dropout=dropout,
                              dropout_key=key, train=train, dtype=dtype)
        if half:
            out, weights = out.astype(dtype), weights.astype(dtype)
        return (out, weights) if return_attention_scores else out

    config = {"num_heads": num_heads, "key_dim": key_dim, "value_dim": values,
              "dropout": dropout, "use_bias": use_bias, "output_dim": output_dim,
              "causal": causal, "init": init}
    if return_attention_scores:
        config["output_structure"] = ("tuple", 2)
    return Layer(init_fn, apply_fn, "multi_head_attention", config)

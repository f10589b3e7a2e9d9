"""The fnlearn layers an import builds for the sequence ops of a PyTorch or Keras model.

``importer`` asks ``torch_layer``/``keras_layer`` first (``NotImplemented``: not a
sequence op). ``fold_masking`` carries a Keras ``Masking`` into the recurrent layers it
masks; ``adapt_to_shapes`` fits layers to the shapes they receive.
"""

from __future__ import annotations

import jax

from fnlearn import nn
from fnlearn.parity.sequence_walk import KerasEncoderBlock, recurrent_module


def _recurrent_layer(kind: str, units: int, bidirectional: bool, merge_mode="concat",
                     **options):
    cell = {"lstm": nn.LSTM, "gru": nn.GRU, "simple_rnn": nn.SimpleRNN}[kind](units, **options)
    return nn.Bidirectional(cell, merge_mode) if bidirectional else cell


def torch_layer(op):
    """The fnlearn layer of a PyTorch sequence op, or ``NotImplemented`` for another kind."""
    m = op.obj
    if op.kind in ("lstm", "gru", "simple_rnn"):
        module = recurrent_module(m)
        if hasattr(module, "fnlearn_layer"):
            return module.fnlearn_layer
        options = dict(return_sequences=op.config.get("return_sequences", True),
                       time_major=not module.batch_first, use_bias=module.bias,
                       convention="torch")
        if op.kind == "simple_rnn":
            options["activation"] = module.nonlinearity
        return _recurrent_layer(op.kind, module.hidden_size, module.bidirectional, **options)
    if op.kind == "multi_head_attention":
        if not m.batch_first or not m._qkv_same_embed_dim:
            raise ValueError(f"MultiheadAttention at {op.where}: only batch_first=True "
                             "self-attention with kdim = vdim = embed_dim is supported")
        return nn.MultiHeadAttention(m.num_heads, m.head_dim, dropout=float(m.dropout),
                                     use_bias=m.in_proj_bias is not None,
                                     causal=getattr(m, "causal", False), init="torch")
    if op.kind == "transformer_encoder":
        if getattr(m, "activation_relu_or_gelu", 0) == 0:
            raise ValueError(f"TransformerEncoderLayer at {op.where} has a custom activation: "
                             "relu and gelu are supported")
        return nn.TransformerEncoderLayer(
            m.self_attn.embed_dim, m.self_attn.num_heads, m.linear1.out_features,
            float(m.dropout.p), "relu" if m.activation_relu_or_gelu == 1 else "gelu",
            float(m.norm1.eps), m.norm_first, bias=m.linear1.bias is not None,
            causal=getattr(m, "causal", False), time_major=not m.self_attn.batch_first)
    simple = {"take_step": lambda: nn.TakeStep(int(op.config.get("index", getattr(
                  m, "index", -1)))),
              "reshape": lambda: nn.Reshape(op.config.get("target_shape") or m.target_shape),
              "global_avg_pool1d": nn.GlobalAveragePooling1D,
              "position_embedding": lambda: nn.PositionEmbedding(m.weight.shape[0]),
              "class_token": nn.ClassToken,
              "sinusoidal_position_embedding": lambda: nn.SinusoidalPositionEmbedding(
                  m.max_wavelength)}
    return simple[op.kind]() if op.kind in simple else NotImplemented


def keras_layer(op):
    """The fnlearn layer of a Keras sequence op, or ``NotImplemented`` for another kind."""
    layer = op.obj
    if isinstance(layer, KerasEncoderBlock):
        return _keras_block(layer, op.where)
    name = type(layer).__name__
    if name in ("LSTM", "GRU", "SimpleRNN", "Bidirectional"):
        inner = layer.forward_layer if name == "Bidirectional" else layer
        cfg = inner.get_config()
        if cfg.get("dropout") or cfg.get("recurrent_dropout") or cfg["return_state"] or \
                cfg.get("stateful"):
            raise ValueError(f"{name} {layer.name!r}: dropout, recurrent_dropout, return_state "
                             "and stateful are not supported (put a Dropout layer before it)")
        kind = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}[type(inner).__name__]
        options = dict(activation=cfg["activation"], use_bias=cfg["use_bias"],
                       return_sequences=cfg["return_sequences"],
                       go_backwards=cfg["go_backwards"], mask_value=op.config.get("mask_value"),
                       zero_output_for_mask=bool(cfg.get("zero_output_for_mask")))
        if kind != "simple_rnn":
            options["recurrent_activation"] = cfg["recurrent_activation"]
        if kind == "gru":
            options["reset_after"] = cfg["reset_after"]
        return _recurrent_layer(kind, cfg["units"], name == "Bidirectional",
                                layer.merge_mode if name == "Bidirectional" else "concat",
                                **options)
    if name == "MultiHeadAttention":
        cfg = layer.get_config()
        return nn.MultiHeadAttention(cfg["num_heads"], cfg["key_dim"], cfg["value_dim"],
                                     dropout=cfg["dropout"], use_bias=cfg["use_bias"],
                                     output_dim=cfg["output_shape"],
                                     causal=op.config.get("causal", False))
    simple = {"GlobalAveragePooling1D": nn.GlobalAveragePooling1D, "PrependToken": nn.ClassToken,
              "AddPositionEmbedding": lambda: nn.PositionEmbedding(layer.max_length),
              "AddSinusoids": lambda: nn.SinusoidalPositionEmbedding(layer.max_wavelength),
              "TakeStep": lambda: nn.TakeStep(layer.index)}
    return simple[name]() if name in simple else NotImplemented


def _keras_block(block: KerasEncoderBlock, where: str):
    mha, linear1 = block.attention.get_config(), block.linear1.get_config()
    d_model = block.linear2.get_config()["units"]
    rates = {float(mha["dropout"])} | {float(d.rate) for d in block.dropouts}
    eps = {float(block.norm1.epsilon), float(block.norm2.epsilon)}
    if (mha["key_dim"] * mha["num_heads"] != d_model or mha["value_dim"] not in (
            None, mha["key_dim"]) or len(rates) != 1 or len(eps) != 1
            or linear1["activation"] not in ("relu", "gelu")):
        raise ValueError(f"the Transformer block at {where} differs from PyTorch's "
                         "TransformerEncoderLayer (heads x key_dim = d_model, one dropout rate, "
                         "one LayerNorm epsilon, relu or gelu): not supported")
    return nn.TransformerEncoderLayer(d_model, mha["num_heads"], linear1["units"], rates.pop(),
                                      linear1["activation"], eps.pop(), block.norm_first,
                                      bias=linear1["use_bias"], causal=block.causal)


def adapt_to_shapes(layers: list, input_shape) -> list:
    """Imported layers fitted to the shapes they receive: a PyTorch ``Dropout2d`` on
    ``(N, C)`` inputs drops single elements (with a deprecation warning), so it becomes
    a ``Dropout`` there."""
    out, shape = [], tuple(input_shape)
    for layer in layers:
        if layer.kind == "spatial_dropout2d" and len(shape) != 3:
            layer = nn.Dropout(layer.config["rate"])
        out.append(layer)
        found = {}

        def run(key, layer=layer, shape=shape, found=found):
            found["shape"] = nn.init_with_state(layer, key, shape)[0]
            return 0

        jax.eval_shape(run, jax.random.key(0))
        shape = found["shape"]
    return out


def fold_masking(ops: list) -> list:
    """Ops with each Keras ``Masking`` folded into the recurrent layers it masks
    (``config["mask_value"]``).

    Keras passes the mask on through layers that return sequences; fnlearn's next
    recurrent layer finds it again where the values are still the mask value (zeros at
    masked steps of a ``Bidirectional``'s sequence, or of a layer with
    ``zero_output_for_mask``, through dropout and relu). A layer that would use a mask
    it cannot find is refused.
    """
    folded, value, findable, where = [], None, False, None
    for op in ops:
        if op.kind == "masking":
            value, findable, where = float(op.obj.mask_value), True, op.where
            continue
        if value is not None and op.kind in ("lstm", "gru", "simple_rnn"):
            if not findable:
                raise ValueError(f"{op.kind} at {op.where} takes the mask Keras passes on from "
                                 f"{where}, which fnlearn cannot find again in its inputs: give "
                                 "the recurrent layer before it zero_output_for_mask=True and "
                                 "nothing but dropout between them")
            op = op._replace(config={**op.config, "mask_value": value})
            inner = getattr(op.obj, "forward_layer", op.obj)
            if inner.return_sequences:
                value, where = 0.0, op.where
                findable = (type(op.obj).__name__ == "Bidirectional"
                            or bool(inner.zero_output_for_mask))
            else:
                value = None
        elif value is not None and op.kind in ("global_avg_pool1d", "multi_head_attention",
                                               "transformer_encoder"):
            raise ValueError(f"{op.kind} at {op.where} uses the mask of {where} in Keras: not "
                             "supported (pass the mask to the fnlearn layer explicitly)")
        elif value is not None and op.kind not in ("dropout", "relu"):
            findable = False
            if op.kind not in ("linear",):
                value = None  # a layer that does not pass the mask on
        folded.append(op)
    return folded

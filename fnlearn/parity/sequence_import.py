"""What ``from_torch`` and ``from_keras`` build for sequence layers: registered builders.

Everything here plugs into the importers through ``builders.register_torch_import`` and
``builders.register_keras_import`` (the weights then move with the ``twins_seq`` entries
of ``registry``):

* PyTorch ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (and fnlearn's twins of them), one fnlearn
  recurrent layer per stacked layer (``num_layers=k`` is k layers, PyTorch's ``dropout``
  between them: a list of ``builders.Part``); ``nn.MultiheadAttention`` called on one
  input; ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` (one layer per
  encoder layer, then its ``norm``); fnlearn's small token modules. Their tuple outputs
  and step indexing are read by ``torch_items``.
* Keras ``LSTM``/``GRU``/``SimpleRNN``/``Bidirectional``, ``MultiHeadAttention`` (called
  as ``mha(x, x)``, ``use_causal_mask`` honoured), ``GlobalAveragePooling1D``,
  ``Masking`` (folded into the recurrent layers it masks: ``keras_masks``) and
  fnlearn's token layers. A hand-written Keras encoder block imports layer by layer.
"""

from __future__ import annotations

from fnlearn import nn
from fnlearn.parity.builders import (
    Part,
    register_keras_import,
    register_torch_import,
    torch_layer,
)
from fnlearn.parity.graphs import Op
from fnlearn.parity.sequence_walk import RecurrentLayer

_RECURRENT = {"lstm": nn.LSTM, "gru": nn.GRU, "simple_rnn": nn.SimpleRNN}
_KERAS_RECURRENT = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}


def _recurrent_layer(kind: str, units: int, bidirectional: bool, merge_mode="concat",
                     **options):
    cell = _RECURRENT[kind](units, **options)
    return nn.Bidirectional(cell, merge_mode) if bidirectional else cell


# --- PyTorch --------------------------------------------------------------------------------


def _torch_recurrent(op: Op):
    m = op.obj
    if hasattr(m, "fnlearn_layer"):  # fnlearn's own twin: the layer it was made from
        return m.fnlearn_layer
    if getattr(m, "proj_size", 0):
        raise ValueError(f"LSTM at {op.where} has proj_size={m.proj_size}: not supported")
    options = dict(return_sequences=op.config.get("return_sequences", True),
                   time_major=not m.batch_first, use_bias=m.bias, convention="torch")
    if op.kind == "simple_rnn":
        options["activation"] = m.nonlinearity
    if m.num_layers == 1:
        return _recurrent_layer(op.kind, m.hidden_size, m.bidirectional, **options)
    parts = []
    for index in range(m.num_layers):
        if index and m.dropout:
            parts.append(Part(f"dropout{index}", nn.Dropout(float(m.dropout)), None))
        last = index == m.num_layers - 1
        layer = _recurrent_layer(op.kind, m.hidden_size, m.bidirectional, **{
            **options, "return_sequences": options["return_sequences"] or not last})
        parts.append(Part(f"l{index}", layer, RecurrentLayer(m, index)))
    return parts


def _torch_attention(op: Op):
    m = op.obj
    if not m.batch_first or not m._qkv_same_embed_dim:  # noqa: SLF001 - PyTorch's own flag
        raise ValueError(f"MultiheadAttention at {op.where}: only batch_first=True "
                         "self-attention with kdim = vdim = embed_dim is supported")
    return nn.MultiHeadAttention(m.num_heads, m.head_dim, dropout=float(m.dropout),
                                 use_bias=m.in_proj_bias is not None,
                                 causal=getattr(m, "causal", False), init="torch")


def _encoder_layer(m, where: str):
    if getattr(m, "activation_relu_or_gelu", 0) == 0:
        raise ValueError(f"TransformerEncoderLayer at {where} has a custom activation: "
                         "relu and gelu are supported")
    return nn.TransformerEncoderLayer(
        m.self_attn.embed_dim, m.self_attn.num_heads, m.linear1.out_features,
        float(m.dropout.p), "relu" if m.activation_relu_or_gelu == 1 else "gelu",
        float(m.norm1.eps), m.norm_first, bias=m.linear1.bias is not None,
        causal=getattr(m, "causal", False), time_major=not m.self_attn.batch_first)


def _torch_encoder(op: Op):
    m = op.obj
    if type(m).__name__ != "TransformerEncoder":
        return _encoder_layer(m, op.where)
    parts = [Part(f"layers.{i}", _encoder_layer(layer, f"{op.where} layer {i}"), layer)
             for i, layer in enumerate(m.layers)]
    if m.norm is not None:
        parts.append(Part("norm", torch_layer(Op("layer_norm", m.norm, f"{op.where} norm", {})),
                          m.norm))
    return parts


def _register_torch() -> None:
    for kind, types in (("lstm", ("LSTM", "SequenceLSTM")), ("gru", ("GRU", "SequenceGRU")),
                        ("simple_rnn", ("RNN", "SequenceRNN"))):
        register_torch_import(kind, _torch_recurrent, module_types=types)
    register_torch_import("multi_head_attention", _torch_attention,
                          module_types=("MultiheadAttention", "SelfAttention"))
    register_torch_import("transformer_encoder", _torch_encoder, module_types=(
        "TransformerEncoderLayer", "TransformerEncoder", "CausalEncoderLayer"))
    simple = {
        "position_embedding": (("AddPositionEmbedding",),
                               lambda op: nn.PositionEmbedding(op.obj.weight.shape[0])),
        "sinusoidal_position_embedding": (("AddSinusoids",), lambda op:
                                          nn.SinusoidalPositionEmbedding(op.obj.max_wavelength)),
        "class_token": (("PrependToken",), lambda op: nn.ClassToken()),
        "global_avg_pool1d": (("MeanOverTime",), lambda op: nn.GlobalAveragePooling1D()),
        "take_step": (("TakeStep",), lambda op: nn.TakeStep(int(op.obj.index))),
        "reshape": (("Reshape",), lambda op: nn.Reshape(tuple(op.obj.target_shape))),
    }
    for kind, (types, build) in simple.items():
        register_torch_import(kind, build, module_types=types)


# --- Keras ----------------------------------------------------------------------------------


def _keras_recurrent(layer, op: Op):
    name = type(layer).__name__
    inner = layer.forward_layer if name == "Bidirectional" else layer
    cfg = inner.get_config()
    if cfg.get("dropout") or cfg.get("recurrent_dropout") or cfg["return_state"] or \
            cfg.get("stateful"):
        raise ValueError(f"{name} {layer.name!r}: dropout, recurrent_dropout, return_state "
                         "and stateful are not supported (put a Dropout layer before it)")
    kind = _KERAS_RECURRENT.get(type(inner).__name__)
    if kind is None:
        raise ValueError(f"{name} {layer.name!r} wraps a {type(inner).__name__}: LSTM, GRU "
                         "and SimpleRNN are supported")
    options = dict(activation=cfg["activation"], use_bias=cfg["use_bias"],
                   return_sequences=cfg["return_sequences"], go_backwards=cfg["go_backwards"],
                   mask_value=op.config.get("mask_value"),
                   zero_output_for_mask=bool(cfg.get("zero_output_for_mask")))
    if kind != "simple_rnn":
        options["recurrent_activation"] = cfg["recurrent_activation"]
    if kind == "gru":
        options["reset_after"] = cfg["reset_after"]
    return _recurrent_layer(kind, cfg["units"], name == "Bidirectional",
                            layer.merge_mode if name == "Bidirectional" else "concat", **options)


def _keras_attention(layer, op: Op):
    cfg, call = layer.get_config(), op.config.get("call") or {}
    if call.get("return_attention_scores"):
        raise ValueError(f"MultiHeadAttention {layer.name!r} returns its attention scores: "
                         "only the output can be imported")
    return nn.MultiHeadAttention(cfg["num_heads"], cfg["key_dim"], cfg["value_dim"],
                                 dropout=cfg["dropout"], use_bias=cfg["use_bias"],
                                 output_dim=cfg["output_shape"],
                                 causal=bool(call.get("use_causal_mask", False)))


def _keras_embedding(layer, op: Op):
    cfg = layer.get_config()
    if cfg.get("mask_zero"):
        raise ValueError(f"Embedding {layer.name!r} has mask_zero=True: fnlearn's recurrent "
                         "layers take their mask explicitly; import the model without it "
                         "and pass {'inputs': x, 'mask': ids != 0} to the recurrent layer")
    return nn.Embedding(cfg["input_dim"], cfg["output_dim"])


def _register_keras() -> None:
    for name in (*_KERAS_RECURRENT, "Bidirectional"):
        register_keras_import(name, _keras_recurrent,
                              kind=_KERAS_RECURRENT.get(name, "bidirectional"))
    register_keras_import("MultiHeadAttention", _keras_attention, kind="multi_head_attention",
                          positional=True)
    register_keras_import("Embedding", _keras_embedding, kind="embedding")
    register_keras_import("Masking", lambda layer, op: None, kind="masking")
    simple = {
        "GlobalAveragePooling1D": ("global_avg_pool1d",
                                   lambda layer, op: nn.GlobalAveragePooling1D()),
        "PrependToken": ("class_token", lambda layer, op: nn.ClassToken()),
        "AddPositionEmbedding": ("position_embedding",
                                 lambda layer, op: nn.PositionEmbedding(layer.max_length)),
        "AddSinusoids": ("sinusoidal_position_embedding", lambda layer, op:
                         nn.SinusoidalPositionEmbedding(layer.max_wavelength)),
        "TakeStep": ("take_step", lambda layer, op: nn.TakeStep(layer.index)),
    }
    for name, (kind, build) in simple.items():
        register_keras_import(name, build, kind=kind)


_register_torch()
_register_keras()


# --- Keras masks ----------------------------------------------------------------------------

_KEEPS_MASK = ("Dropout", "ReLU")
_REFUSES_MASK = ("GlobalAveragePooling1D", "MultiHeadAttention")


def keras_masks(config: dict, get_layer) -> dict[str, float]:
    """The mask value each recurrent layer of a Keras model finds in its inputs, by name.

    A ``Masking`` layer is the identity in fnlearn; Keras passes its mask on through
    layers that return sequences. fnlearn's next recurrent layer finds it again where
    the values are still the mask value (zeros at masked steps of a ``Bidirectional``'s
    sequence, or of a layer with ``zero_output_for_mask``, through dropout and relu). A
    layer that would use a mask it cannot find is refused.

    Args:
      config: the functional config (``layers`` in call order, with inbound nodes).
      get_layer: ``name -> keras layer``.
    """
    state: dict[str, tuple | None] = {}  # layer name -> (value, findable, where) of its output
    masks = {}
    for entry in config["layers"]:
        name, kind = entry["name"], entry["class_name"]
        sources = {h for inbound in entry["inbound_nodes"] for h in _sources(inbound["args"])}
        found = [state[s] for s in sources if state.get(s) is not None]
        where = f"layer {name!r} ({kind})"
        if kind == "Masking":
            state[name] = (float(get_layer(name).mask_value), True, where)
            continue
        if not found:
            state[name] = None
            continue
        if len(sources) > 1:
            raise ValueError(f"{where} merges a masked value (Keras passes the mask of "
                             f"{found[0][2]} on): not supported")
        value, findable, origin = found[0]
        if kind in _KERAS_RECURRENT or kind == "Bidirectional":
            if not findable:
                raise ValueError(f"{kind} at {where} takes the mask Keras passes on from "
                                 f"{origin}, which fnlearn cannot find again in its inputs: give "
                                 "the recurrent layer before it zero_output_for_mask=True and "
                                 "nothing but dropout between them")
            masks[name] = value
            layer = get_layer(name)
            inner = getattr(layer, "forward_layer", layer)
            state[name] = (0.0, kind == "Bidirectional" or bool(inner.zero_output_for_mask),
                           where) if inner.return_sequences else None
        elif kind in _REFUSES_MASK:
            raise ValueError(f"{kind} at {where} uses the mask of {origin} in Keras: not "
                             "supported (pass the mask to the fnlearn layer explicitly)")
        elif kind in _KEEPS_MASK:
            state[name] = found[0]
        elif kind == "Dense":
            state[name] = (value, False, origin)
        else:
            state[name] = None  # a layer that does not pass the mask on
    return masks


def _sources(value) -> list[str]:
    """The layer names of the Keras tensors in a serialized call argument."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        return [value["config"]["keras_history"][0]]
    if isinstance(value, list | tuple):
        return [name for v in value for name in _sources(v)]
    if isinstance(value, dict):
        return [name for v in value.values() for name in _sources(v)]
    return []

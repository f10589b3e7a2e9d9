"""The registry's entries for the sequence layers: recurrent, attention, Transformer, tokens.

Weights, fnlearn against PyTorch:

=====================  ==================================================================
fnlearn                PyTorch
=====================  ==================================================================
RNN ``kernel``         ``weight_ih_l0`` transposed; GRU gate blocks ``z, r, h`` become
                       ``r, z, n``
``recurrent_kernel``   ``weight_hh_l0`` transposed (same gate order)
``bias``               ``bias_ih_l0``
``recurrent_bias``     ``bias_hh_l0`` (zeros for a one-bias ``convention="keras"`` layer;
                       reading PyTorch into such a layer sums the two biases)
Bidirectional          the backward copy's weights end in ``_reverse``
attention ``query``,   ``in_proj_weight`` rows 0..E, E..2E, 2E..3E (transposed, heads
``key``, ``value``     split: ``kernel.reshape(E, E).T``); ``in_proj_bias`` likewise
attention ``output``   ``out_proj.weight`` = ``kernel.reshape(E, E).T``, ``out_proj.bias``
Transformer block      PyTorch's names: ``self_attn.*``, ``linear1``, ``linear2``,
                       ``norm1``, ``norm2``
=====================  ==================================================================

Keras keeps fnlearn's layouts, except that an LSTM or SimpleRNN has one bias (fnlearn's
two are summed into it) and a ``GRU(reset_after=True)`` stacks its two as a
``(2, 3 * units)`` bias. The twins (``twins_seq_modules``) take fnlearn's layout:
``(batch, time, features)`` unless ``time_major``.
"""

from __future__ import annotations

import numpy as np

from fnlearn.parity import sequence_walk
from fnlearn.parity import twins_seq_modules as modules
from fnlearn.parity.twins import Entry, f32

RECURRENT = ("simple_rnn", "lstm", "gru")


def _cell(layer):
    """The recurrent kind and options of an RNN or a Bidirectional layer, and the directions."""
    if layer.kind == "bidirectional":
        return layer.config["layer"], layer.config, ("", "_reverse")
    return layer.kind, layer.config, ("",)


def _gru_order(array, units: int) -> np.ndarray:
    """GRU gate blocks swapped between fnlearn/Keras (z, r, h) and PyTorch (r, z, n) order:
    the same permutation both ways (on the first axis)."""
    return np.concatenate([array[units:2 * units], array[:units], array[2 * units:]])


def _torch_index(module) -> str:
    return f"_l{module.index}" if isinstance(module, sequence_walk.RecurrentLayer) else "_l0"


def _rnn_to_torch(params, state, layer, module, flatten_from):
    kind, config, directions = _cell(layer)
    units, out = config["units"], {}
    parts = [params["forward"], params["backward"]] if layer.kind == "bidirectional" else [params]
    index = _torch_index(module)
    for direction, p in zip(directions, parts):
        order = (lambda a: _gru_order(a, units)) if kind == "gru" else (lambda a: a)
        suffix = f"{index}{direction}"
        out[f"weight_ih{suffix}"] = np.ascontiguousarray(order(f32(p["kernel"]).T))
        out[f"weight_hh{suffix}"] = np.ascontiguousarray(order(f32(p["recurrent_kernel"]).T))
        if "bias" in p:
            out[f"bias_ih{suffix}"] = order(f32(p["bias"]))
            out[f"bias_hh{suffix}"] = order(f32(p["recurrent_bias"]) if "recurrent_bias" in p
                                            else np.zeros_like(f32(p["bias"])))
    return out


def _rnn_from_torch(tensors, layer, module, flatten_from):
    kind, config, directions = _cell(layer)
    units, parts = config["units"], []
    two = "recurrent_bias" in modules.param_names(layer)
    for direction in directions:
        order = (lambda a: _gru_order(a, units)) if kind == "gru" else (lambda a: a)
        p = {"kernel": np.ascontiguousarray(order(f32(tensors[f"weight_ih_l0{direction}"])).T),
             "recurrent_kernel": np.ascontiguousarray(
                 order(f32(tensors[f"weight_hh_l0{direction}"])).T)}
        if tensors.get(f"bias_ih_l0{direction}") is not None:
            bias = order(f32(tensors[f"bias_ih_l0{direction}"]))
            recurrent = order(f32(tensors[f"bias_hh_l0{direction}"]))
            if two:
                p["bias"], p["recurrent_bias"] = bias, recurrent
            else:
                p["bias"] = bias + recurrent
        parts.append(p)
    if layer.kind == "bidirectional":
        return {"forward": parts[0], "backward": parts[1]}, {}
    return parts[0], {}


def _rnn_to_keras(params, state, layer):
    kind, config, _ = _cell(layer)
    parts = [params["forward"], params["backward"]] if layer.kind == "bidirectional" else [params]
    weights = []
    for p in parts:
        weights += [f32(p["kernel"]), f32(p["recurrent_kernel"])]
        if "bias" in p:
            if kind == "gru" and config["reset_after"]:
                weights.append(np.stack([f32(p["bias"]), f32(p["recurrent_bias"])]))
            else:
                weights.append(f32(p["bias"]) + (f32(p["recurrent_bias"])
                                                 if "recurrent_bias" in p else 0.0))
    return weights


def _rnn_from_keras(weights, layer):
    kind, config, directions = _cell(layer)
    per = 3 if config["use_bias"] else 2
    two = "recurrent_bias" in modules.param_names(layer)
    parts = []
    for i in range(len(directions)):
        w = [f32(a) for a in weights[i * per:(i + 1) * per]]
        p = {"kernel": w[0], "recurrent_kernel": w[1]}
        if per == 3:
            bias = w[2]
            if bias.ndim == 2:
                p["bias"], p["recurrent_bias"] = bias[0], bias[1]
            elif two:
                p["bias"], p["recurrent_bias"] = bias, np.zeros_like(bias)
            else:
                p["bias"] = bias
        parts.append(p)
    if layer.kind == "bidirectional":
        return {"forward": parts[0], "backward": parts[1]}, {}
    return parts[0], {}


# --- attention ----------------------------------------------------------------------------


def attention_to_torch(p, prefix: str = "") -> dict:
    """PyTorch ``nn.MultiheadAttention`` tensors from fnlearn attention parameters."""
    def flat(kernel):  # (E, heads, head_dim) -> (heads * head_dim, E)
        kernel = f32(kernel)
        return kernel.reshape(kernel.shape[0], -1).T

    out = {f"{prefix}in_proj_weight": np.ascontiguousarray(np.concatenate(
        [flat(p[name]["kernel"]) for name in ("query", "key", "value")]))}
    kernel = f32(p["output"]["kernel"])
    out[f"{prefix}out_proj.weight"] = np.ascontiguousarray(
        kernel.reshape(-1, kernel.shape[-1]).T)
    if "bias" in p["query"]:
        out[f"{prefix}in_proj_bias"] = np.concatenate(
            [f32(p[name]["bias"]).reshape(-1) for name in ("query", "key", "value")])
        out[f"{prefix}out_proj.bias"] = f32(p["output"]["bias"])
    return out


def attention_from_torch(tensors, heads: int, prefix: str = "") -> dict:
    """fnlearn attention parameters from ``nn.MultiheadAttention`` tensors."""
    packed = f32(tensors[f"{prefix}in_proj_weight"])
    embed = packed.shape[1]
    out_weight = f32(tensors[f"{prefix}out_proj.weight"])
    params = {}
    for i, name in enumerate(("query", "key", "value")):
        rows = packed[i * embed:(i + 1) * embed]
        params[name] = {"kernel": np.ascontiguousarray(rows.T.reshape(embed, heads, -1))}
    params["output"] = {"kernel": np.ascontiguousarray(out_weight.T.reshape(heads, -1, embed))}
    if tensors.get(f"{prefix}in_proj_bias") is not None:
        bias = f32(tensors[f"{prefix}in_proj_bias"])
        for i, name in enumerate(("query", "key", "value")):
            params[name]["bias"] = bias[i * embed:(i + 1) * embed].reshape(heads, -1)
        params["output"]["bias"] = f32(tensors[f"{prefix}out_proj.bias"])
    return params


def _attention_keras_weights(p) -> list:
    return [f32(p[name][leaf]) for name in ("query", "key", "value", "output")
            for leaf in ("kernel", "bias") if leaf in p[name]]


def _attention_from_keras_weights(weights, use_bias: bool) -> dict:
    weights, params = [f32(w) for w in weights], {}
    step = 2 if use_bias else 1
    for i, name in enumerate(("query", "key", "value", "output")):
        params[name] = {"kernel": weights[i * step]}
        if use_bias:
            params[name]["bias"] = weights[i * step + 1]
    return params


def _tensors(module, tensors) -> dict:
    """Every tensor of a module, nested ones included (their dotted names)."""
    if hasattr(module, "named_parameters"):
        return dict(module.named_parameters())
    return tensors


def _block_to_torch(params, state, layer, module, flatten_from):
    out = attention_to_torch(params["self_attn"], "self_attn.")
    for name in ("linear1", "linear2"):
        out[f"{name}.weight"] = np.ascontiguousarray(f32(params[name]["kernel"]).T)
        if "bias" in params[name]:
            out[f"{name}.bias"] = f32(params[name]["bias"])
    for name in ("norm1", "norm2"):
        out[f"{name}.weight"] = f32(params[name]["gamma"])
        if "beta" in params[name]:
            out[f"{name}.bias"] = f32(params[name]["beta"])
    return out


def _block_from_torch(tensors, layer, module, flatten_from):
    tensors = _tensors(module, tensors)
    params = {"self_attn": attention_from_torch(tensors, layer.config["nhead"], "self_attn.")}
    for name in ("linear1", "linear2"):
        params[name] = {"kernel": np.ascontiguousarray(f32(tensors[f"{name}.weight"]).T)}
        if tensors.get(f"{name}.bias") is not None:
            params[name]["bias"] = f32(tensors[f"{name}.bias"])
    for name in ("norm1", "norm2"):
        params[name] = {"gamma": f32(tensors[f"{name}.weight"])}
        if tensors.get(f"{name}.bias") is not None:
            params[name]["beta"] = f32(tensors[f"{name}.bias"])
    return params, {}


def _block_to_keras(params, state, layer):
    weights = _attention_keras_weights(params["self_attn"])
    for name in ("norm1", "linear1", "linear2", "norm2"):
        leaves = ("gamma", "beta") if name.startswith("norm") else ("kernel", "bias")
        weights += [f32(params[name][leaf]) for leaf in leaves if leaf in params[name]]
    return weights


def _block_from_keras(weights, layer):
    bias = layer.config["bias"]
    count = 8 if bias else 4
    params = {"self_attn": _attention_from_keras_weights(weights[:count], bias)}
    rest = [f32(w) for w in weights[count:]]
    for name in ("norm1", "linear1", "linear2", "norm2"):
        leaves = ("gamma", "beta") if name.startswith("norm") else ("kernel", "bias")
        leaves = leaves if bias else leaves[:1]
        params[name] = dict(zip(leaves, rest[:len(leaves)]))
        rest = rest[len(leaves):]
    return params, {}


def _one(name: str, leaf: str):
    """Converters for a layer with one weight, ``params[name]`` = the twin's ``leaf``."""
    return (lambda p, s, layer, m, f: {leaf: f32(p[name])},
            lambda t, layer, m, f: ({name: f32(t[leaf])}, {}),
            lambda p, s, layer: [f32(p[name])],
            lambda weights, layer: ({name: f32(weights[0])}, {}))


def entries() -> dict[str, Entry]:
    """The entries this module adds to ``registry.REGISTRY``, by fnlearn layer kind."""
    out = {}
    for kind in (*RECURRENT, "bidirectional"):
        out[kind] = Entry(lambda layer: (_cell(layer)[0],), modules.recurrent_torch,
                          modules.recurrent_keras, _rnn_to_torch, _rnn_from_torch,
                          _rnn_to_keras, _rnn_from_keras)
    out["multi_head_attention"] = Entry(
        lambda layer: ("multi_head_attention",), modules.attention_torch,
        modules.attention_keras,
        lambda p, s, layer, m, f: attention_to_torch(p),
        lambda t, layer, m, f: (attention_from_torch(_tensors(m, t),
                                                     layer.config["num_heads"]), {}),
        lambda p, s, layer: _attention_keras_weights(p),
        lambda weights, layer: (_attention_from_keras_weights(
            weights, layer.config["use_bias"]), {}))
    out["transformer_encoder"] = Entry(
        lambda layer: ("transformer_encoder",), modules.encoder_torch, modules.encoder_keras,
        _block_to_torch, _block_from_torch, _block_to_keras, _block_from_keras)
    out["position_embedding"] = Entry(
        lambda layer: ("position_embedding",), modules.position_torch, modules.position_keras,
        *_one("embeddings", "weight"))
    out["class_token"] = Entry(lambda layer: ("class_token",), modules.token_torch,
                               modules.token_keras, *_one("token", "token"))
    for kind in ("sinusoidal_position_embedding", "global_avg_pool1d", "take_step", "reshape"):
        out[kind] = Entry(lambda layer, k=kind: (k,), modules.stateless_torch(kind),
                          modules.stateless_keras(kind))
    return out

"""PyTorch and Keras twins of fnlearn's sequence layers.

Twins compute what the fnlearn layer computes on ``(batch, time, features)``:

* recurrent: a subclass of ``nn.LSTM``/``nn.GRU``/``nn.RNN`` returning fnlearn's outputs
  (every step, or the last; a mask from ``mask_value`` becomes a packed sequence, real
  steps first); in Keras the layer itself (after a ``Masking``), in ``Bidirectional``;
* attention: ``SelfAttention``, an ``nn.MultiheadAttention`` called on one input with
  ``batch_first``; in Keras a functional model calling ``MultiHeadAttention(x, x)``;
* Transformer block: ``nn.TransformerEncoderLayer`` (``CausalEncoderLayer`` passes the
  causal mask); in Keras a functional block of standard layers;
* tokens: small modules and Keras layers of fnlearn's own (``AddPositionEmbedding``,
  ``AddSinusoids``, ``PrependToken``, ``TakeStep``, ``MeanOverTime``, ``Reshape``).
"""

from __future__ import annotations

from fnlearn.nn import rnn_cells
from fnlearn.nn.sequence import sinusoids
from fnlearn.parity.graphs import import_torch
from fnlearn.parity.twins import keras_activation, torch_activation

_TORCH_RNN = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "RNN"}


def param_names(layer) -> set[str]:
    """The parameter names of one direction of an fnlearn recurrent layer."""
    kind = layer.config.get("layer", layer.kind)
    c = layer.config
    names = {"kernel", "recurrent_kernel"}
    if c["use_bias"]:
        names.add("bias")
    if rnn_cells.has_recurrent_bias(kind, c["convention"], c["use_bias"], c["reset_after"]):
        names.add("recurrent_bias")
    return names


def recurrent_torch(layer, shape):
    """The PyTorch twin of an fnlearn SimpleRNN, LSTM, GRU or Bidirectional."""
    torch = import_torch()
    kind = layer.config.get("layer", layer.kind)
    c, bidirectional = layer.config, layer.kind == "bidirectional"
    merge = c.get("merge_mode", "concat")
    defaults = c["activation"] in ("tanh", "relu") if kind == "simple_rnn" else (
        c["activation"] == "tanh" and c["recurrent_activation"] == "sigmoid")
    if not defaults or (kind == "gru" and not c["reset_after"]) or merge is None or (
            c["mask_value"] is not None and c["go_backwards"] and not bidirectional):
        raise ValueError(f"{layer.kind} with {c} has no PyTorch twin (PyTorch has tanh/sigmoid "
                         "gates, GRU's reset_after=True, and merges directions by concat)")
    base = getattr(torch.nn, _TORCH_RNN[kind])
    n_states = rnn_cells.STATES[kind]

    class Twin(base):
        def forward(self, x, initial_state=None):
            time_axis = 0 if c["time_major"] else 1
            mask = None
            if c["mask_value"] is not None:
                mask = (x != c["mask_value"]).any(-1)
                mask = mask.T if c["time_major"] else mask
            if c["go_backwards"] and not bidirectional:
                x = x.flip(time_axis)
            hx = None
            if initial_state is not None:
                stacked = [torch.stack(initial_state[i::n_states]) for i in range(n_states)]
                hx = tuple(stacked) if kind == "lstm" else stacked[0]
            if mask is None:
                out, states = super().forward(x, hx)
            else:
                lengths = mask.sum(1)
                packed = torch.nn.utils.rnn.pack_padded_sequence(
                    x, lengths, batch_first=not c["time_major"], enforce_sorted=False)
                out, states = super().forward(packed, hx)
                out, _ = torch.nn.utils.rnn.pad_packed_sequence(
                    out, batch_first=not c["time_major"], total_length=x.shape[time_axis])
                if c["return_sequences"] and not c["zero_output_for_mask"]:
                    # Keras repeats the last real output over the padding.
                    last = (lengths - 1).clamp(min=0)
                    steps = torch.arange(x.shape[time_axis])
                    index = torch.minimum(steps[None, :], last[:, None])
                    if c["time_major"]:
                        out = out.gather(0, index.T[..., None].expand(-1, -1, out.shape[-1]))
                    else:
                        out = out.gather(1, index[..., None].expand(-1, -1, out.shape[-1]))
            states = states if kind == "lstm" else (states,)
            if c["return_sequences"]:
                result = out
            else:
                result = torch.cat(list(states[0]), dim=-1)
            if bidirectional and merge != "concat":
                forward_half, backward_half = result.chunk(2, dim=-1)
                result = {"sum": forward_half + backward_half,
                          "mul": forward_half * backward_half,
                          "ave": (forward_half + backward_half) / 2}[merge]
            if c["return_state"]:
                return (result, *[s[d] for d in range(len(states[0])) for s in states])
            return result

    Twin.__name__ = Twin.__qualname__ = f"Sequence{_TORCH_RNN[kind]}"
    options = dict(batch_first=not c["time_major"], bias=c["use_bias"],
                   bidirectional=bidirectional)
    if kind == "simple_rnn":
        options["nonlinearity"] = c["activation"]
    module = Twin(shape[-1], c["units"], **options)
    module.fnlearn_layer = layer
    return [module]


def recurrent_keras(keras, layer, shape):
    """The Keras twin: an LSTM/GRU/SimpleRNN layer (in a Bidirectional), after a Masking."""
    kind = layer.config.get("layer", layer.kind)
    c = layer.config
    if c["time_major"] or c["return_state"]:
        raise ValueError(f"{layer.kind} with time_major or return_state has no Keras twin in "
                         "a chain (Keras is batch-major; states are extra outputs)")
    options = dict(units=c["units"], activation=keras_activation(keras, c["activation"]),
                   use_bias=c["use_bias"], return_sequences=c["return_sequences"],
                   zero_output_for_mask=c["zero_output_for_mask"])
    if kind != "simple_rnn":
        options["recurrent_activation"] = keras_activation(keras, c["recurrent_activation"])
    if kind == "gru":
        options["reset_after"] = c["reset_after"]
    cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU,
           "simple_rnn": keras.layers.SimpleRNN}[kind]
    if layer.kind == "bidirectional":
        built = keras.layers.Bidirectional(cls(go_backwards=c["go_backwards"], **options),
                                           merge_mode=c["merge_mode"])
    else:
        built = cls(go_backwards=c["go_backwards"], **options)
    return ([keras.layers.Masking(c["mask_value"])] if c["mask_value"] is not None else []) + [
        built]


def _attention_twin_ok(c, features) -> bool:
    return (c["key_dim"] * c["num_heads"] == features and c["value_dim"] == c["key_dim"]
            and c["output_dim"] in (None, features) and "output_structure" not in c)


def attention_torch(layer, shape):
    """``SelfAttention``: ``nn.MultiheadAttention(batch_first=True)`` called on one input."""
    torch = import_torch()
    c = layer.config
    if not _attention_twin_ok(c, shape[-1]):
        raise ValueError(f"MultiHeadAttention {c} on features {shape[-1]} has no PyTorch twin: "
                         "PyTorch needs num_heads * key_dim = value width = output = features")

    class SelfAttention(torch.nn.MultiheadAttention):
        def forward(self, x):
            mask = None
            if self.causal:
                length = x.shape[1]
                mask = torch.ones(length, length, dtype=torch.bool).triu(1)
            return super().forward(x, x, x, need_weights=False, attn_mask=mask)[0]

    module = SelfAttention(shape[-1], c["num_heads"], dropout=c["dropout"], bias=c["use_bias"],
                           batch_first=True)
    module.causal = c["causal"]
    return [module]


def attention_keras(keras, layer, shape):
    """A functional model calling ``MultiHeadAttention`` on its one input."""
    c = layer.config
    if "output_structure" in c:
        raise ValueError("MultiHeadAttention with return_attention_scores has no Keras twin in "
                         "a chain")
    inputs = keras.Input(tuple(shape))
    attention = keras.layers.MultiHeadAttention(
        c["num_heads"], c["key_dim"], c["value_dim"], dropout=c["dropout"],
        use_bias=c["use_bias"], output_shape=c["output_dim"])
    return [keras.Model(inputs, attention(inputs, inputs, use_causal_mask=c["causal"]))]


def encoder_torch(layer, shape):
    """``nn.TransformerEncoderLayer`` (``CausalEncoderLayer`` for a causal block)."""
    torch = import_torch()
    c = layer.config
    activation = c["activation"] if c["activation"] in ("relu", "gelu") else torch_activation(
        torch.nn, c["activation"])

    class CausalEncoderLayer(torch.nn.TransformerEncoderLayer):
        def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
            length = src.shape[0 if c["time_major"] else 1]
            mask = torch.nn.Transformer.generate_square_subsequent_mask(length)
            return super().forward(src, mask, src_key_padding_mask, is_causal=True)

    cls = CausalEncoderLayer if c["causal"] else torch.nn.TransformerEncoderLayer
    module = cls(c["d_model"], c["nhead"], c["dim_feedforward"], c["dropout"], activation,
                 c["layer_norm_eps"], batch_first=not c["time_major"],
                 norm_first=c["norm_first"], bias=c["bias"])
    module.causal = c["causal"]
    return [module]


def encoder_keras(keras, layer, shape):
    """The block as a Keras functional model of standard layers (``sequence_walk`` reads it)."""
    c = layer.config
    if c["time_major"]:
        raise ValueError("a time_major TransformerEncoderLayer has no Keras twin")
    layers = keras.layers
    inputs = keras.Input(tuple(shape))

    def attention(x):
        mha = layers.MultiHeadAttention(c["nhead"], c["d_model"] // c["nhead"],
                                        dropout=c["dropout"], use_bias=c["bias"])
        return layers.Dropout(c["dropout"])(mha(x, x, use_causal_mask=c["causal"]))

    def feed_forward(x):
        x = layers.Dense(c["dim_feedforward"], keras_activation(keras, c["activation"]),
                         use_bias=c["bias"])(x)
        x = layers.Dense(c["d_model"], use_bias=c["bias"])(layers.Dropout(c["dropout"])(x))
        return layers.Dropout(c["dropout"])(x)

    def norm():
        return layers.LayerNormalization(epsilon=c["layer_norm_eps"], center=c["bias"])

    if c["norm_first"]:
        x = layers.Add()([inputs, attention(norm()(inputs))])
        out = layers.Add()([x, feed_forward(norm()(x))])
    else:
        x = norm()(layers.Add()([inputs, attention(inputs)]))
        out = norm()(layers.Add()([x, feed_forward(x)]))
    return [keras.Model(inputs, out)]


def _torch_modules():
    torch = import_torch()

    class AddPositionEmbedding(torch.nn.Module):
        def __init__(self, max_length, features):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(max_length, features))

        def forward(self, x):
            return x + self.weight[:x.shape[1]]

    class PrependToken(torch.nn.Module):
        def __init__(self, features):
            super().__init__()
            self.token = torch.nn.Parameter(torch.zeros(features))

        def forward(self, x):
            return torch.cat([self.token.expand(x.shape[0], 1, -1), x], dim=1)

    class AddSinusoids(torch.nn.Module):
        def __init__(self, max_wavelength):
            super().__init__()
            self.max_wavelength = max_wavelength

        def forward(self, x):
            return x + torch.from_numpy(sinusoids(x.shape[1], x.shape[2], self.max_wavelength))

    class MeanOverTime(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=1)

    class TakeStep(torch.nn.Module):
        def __init__(self, index):
            super().__init__()
            self.index = index

        def forward(self, x):
            return x[:, self.index]

    class Reshape(torch.nn.Module):
        def __init__(self, target_shape):
            super().__init__()
            self.target_shape = tuple(target_shape)

        def forward(self, x):
            if x.dim() == 4:  # an NCHW image: fnlearn reshapes (H, W, C)
                x = x.permute(0, 2, 3, 1)
            return x.reshape(x.shape[0], *self.target_shape)

    return {cls.__name__: cls for cls in (AddPositionEmbedding, PrependToken, AddSinusoids,
                                          MeanOverTime, TakeStep, Reshape)}


def _keras_layers(keras):
    ops = keras.ops

    class AddPositionEmbedding(keras.layers.Layer):
        def __init__(self, max_length, **kwargs):
            super().__init__(**kwargs)
            self.max_length = max_length

        def build(self, input_shape):
            self.embeddings = self.add_weight((self.max_length, input_shape[-1]), "zeros",
                                              name="embeddings")

        def call(self, x):
            return x + self.embeddings[:ops.shape(x)[1]]

        def get_config(self):
            return {**super().get_config(), "max_length": self.max_length}

    class PrependToken(keras.layers.Layer):
        def build(self, input_shape):
            self.token = self.add_weight((input_shape[-1],), "zeros", name="token")

        def call(self, x):
            token = ops.broadcast_to(self.token, (ops.shape(x)[0], 1, ops.shape(x)[2]))
            return ops.concatenate([token, x], axis=1)

    class AddSinusoids(keras.layers.Layer):
        def __init__(self, max_wavelength=10000.0, **kwargs):
            super().__init__(**kwargs)
            self.max_wavelength = max_wavelength

        def call(self, x):
            return x + sinusoids(x.shape[1], x.shape[2], self.max_wavelength)

        def get_config(self):
            return {**super().get_config(), "max_wavelength": self.max_wavelength}

    class TakeStep(keras.layers.Layer):
        def __init__(self, index=-1, **kwargs):
            super().__init__(**kwargs)
            self.index = index

        def call(self, x):
            return x[:, self.index]

        def get_config(self):
            return {**super().get_config(), "index": self.index}

    return {cls.__name__: cls for cls in (AddPositionEmbedding, PrependToken, AddSinusoids,
                                          TakeStep)}


def position_torch(layer, shape):
    return [_torch_modules()["AddPositionEmbedding"](layer.config["max_length"], shape[-1])]


def position_keras(keras, layer, shape):
    return [_keras_layers(keras)["AddPositionEmbedding"](layer.config["max_length"])]


def token_torch(layer, shape):
    return [_torch_modules()["PrependToken"](shape[-1])]


def token_keras(keras, layer, shape):
    return [_keras_layers(keras)["PrependToken"]()]


def stateless_torch(kind: str):
    def build(layer, shape):
        found = _torch_modules()
        if kind == "sinusoidal_position_embedding":
            return [found["AddSinusoids"](layer.config["max_wavelength"])]
        if kind == "take_step":
            return [found["TakeStep"](layer.config["index"])]
        if kind == "reshape":
            return [found["Reshape"](layer.config["target_shape"])]
        return [found["MeanOverTime"]()]
    return build


def stateless_keras(kind: str):
    def build(keras, layer, shape):
        found = _keras_layers(keras)
        if kind == "sinusoidal_position_embedding":
            return [found["AddSinusoids"](layer.config["max_wavelength"])]
        if kind == "take_step":
            return [found["TakeStep"](layer.config["index"])]
        if kind == "reshape":
            return [keras.layers.Reshape(layer.config["target_shape"])]
        return [keras.layers.GlobalAveragePooling1D()]
    return build

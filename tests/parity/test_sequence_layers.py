"""The sequence layers against their live PyTorch and Keras twins: forward, parameter and
input gradients (the harness and tolerances of ``test_layers``).

A layer with PyTorch's two biases (``convention="torch"``) is checked against PyTorch,
one with Keras's single bias against Keras (each framework's gradients come back through
the converters, and a one-bias twin cannot tell the two biases' gradients apart); a GRU
has two biases in both frameworks and is checked against both.

The gradient of an attention layer's key bias is zero in exact arithmetic (it adds the
same ``q . b`` to every score of a query, which the softmax cancels): all three frameworks
return rounding noise there, so that tensor is held to 1e-6 of the largest gradient of
the model rather than of its own largest entry.
"""

import jax
import numpy as np
import pytest
from test_layers import (
    GRAD_ATOL_FRACTION,
    case,
    check,
    non_trivial,
    ours,
    theirs_keras,
    theirs_torch,
)

from fnlearn import nn, parity

pytestmark = pytest.mark.parity

TORCH, KERAS = ("torch",), ("keras",)

CASES = [
    case("lstm_torch_sequences", lambda: nn.serial(nn.LSTM(4, return_sequences=True,
                                                            convention="torch")), (6, 3), TORCH),
    case("lstm_torch_last_then_dense", lambda: nn.serial(
        nn.LSTM(5, convention="torch"), nn.Dense(2)), (7, 3), TORCH),
    case("lstm_torch_time_major", lambda: nn.serial(nn.LSTM(
        4, return_sequences=True, time_major=True, convention="torch")), (6, 3), TORCH),
    case("lstm_torch_go_backwards", lambda: nn.serial(nn.LSTM(
        3, return_sequences=True, go_backwards=True, convention="torch")), (5, 2), TORCH),
    case("lstm_keras_sequences", lambda: nn.serial(nn.LSTM(4, return_sequences=True)), (6, 3),
         KERAS),
    case("lstm_keras_go_backwards_last", lambda: nn.serial(nn.LSTM(4, go_backwards=True)),
         (6, 3), KERAS),
    case("gru_reset_after_torch", lambda: nn.serial(nn.GRU(4, return_sequences=True,
                                                          convention="torch")), (6, 3)),
    case("gru_reset_after_keras", lambda: nn.serial(nn.GRU(4)), (6, 3)),
    case("gru_classic_reset_before", lambda: nn.serial(nn.GRU(4, reset_after=False,
                                                              return_sequences=True)),
         (6, 3), KERAS),
    case("simple_rnn_torch_relu", lambda: nn.serial(nn.SimpleRNN(
        4, "relu", return_sequences=True, convention="torch")), (6, 3), TORCH),
    case("simple_rnn_keras", lambda: nn.serial(nn.SimpleRNN(4, return_sequences=True)), (6, 3),
         KERAS),
    case("bidirectional_lstm_torch", lambda: nn.serial(nn.Bidirectional(nn.LSTM(
        3, return_sequences=True, convention="torch"))), (5, 2), TORCH),
    case("bidirectional_lstm_torch_last", lambda: nn.serial(nn.Bidirectional(nn.LSTM(
        3, convention="torch")), nn.Dense(2)), (5, 2), TORCH),
    case("bidirectional_gru_sum", lambda: nn.serial(nn.Bidirectional(nn.GRU(
        3, return_sequences=True), "sum")), (5, 2)),
    case("bidirectional_simple_rnn_keras_ave", lambda: nn.serial(nn.Bidirectional(
        nn.SimpleRNN(3, return_sequences=True), "ave")), (5, 2), KERAS),
    case("stacked_lstm_torch", lambda: nn.serial(
        nn.LSTM(4, return_sequences=True, convention="torch"), nn.Dropout(0.3),
        nn.LSTM(3, convention="torch")), (6, 3), TORCH),
    case("stacked_gru", lambda: nn.serial(nn.GRU(4, return_sequences=True), nn.GRU(3)),
         (6, 3)),
    case("attention", lambda: nn.serial(nn.MultiHeadAttention(2, 3)), (5, 6)),
    case("attention_causal_torch_init", lambda: nn.serial(nn.MultiHeadAttention(
        3, 2, causal=True, init="torch")), (4, 6)),
    case("attention_no_bias", lambda: nn.serial(nn.MultiHeadAttention(2, 2, use_bias=False)),
         (5, 4)),
    case("attention_keras_value_dim_output_dim", lambda: nn.serial(nn.MultiHeadAttention(
        2, 3, 5, output_dim=7)), (5, 4), KERAS),
    case("encoder_post_norm_relu", lambda: nn.serial(nn.TransformerEncoderLayer(
        8, 2, 16, 0.1)), (5, 8)),
    case("encoder_pre_norm_gelu", lambda: nn.serial(nn.TransformerEncoderLayer(
        8, 4, 12, 0.0, "gelu", 1e-6, norm_first=True)), (5, 8)),
    case("encoder_causal_no_bias", lambda: nn.serial(nn.TransformerEncoderLayer(
        6, 2, 10, 0.2, norm_first=True, bias=False, causal=True)), (4, 6)),
    case("encoder_time_major", lambda: nn.serial(nn.TransformerEncoderLayer(
        6, 3, 8, time_major=True)), (4, 6), TORCH),
    case("vit_tokens", lambda: nn.serial(
        nn.Conv2D(6, 3, strides=3), nn.Reshape((4, 6)), nn.ClassToken(),
        nn.PositionEmbedding(9), nn.TakeStep(0), nn.Dense(3)), (6, 6, 2)),
    case("vit_head", lambda: nn.serial(
        nn.TransformerEncoderLayer(6, 2, 8, norm_first=True), nn.LayerNorm(convention="torch"),
        nn.TakeStep(0), nn.Dense(3)), (5, 6)),
    case("sinusoids_and_mean_pooling", lambda: nn.serial(
        nn.Dense(6), nn.SinusoidalPositionEmbedding(), nn.TransformerEncoderLayer(6, 2, 8),
        nn.GlobalAveragePooling1D(), nn.Dense(2)), (7, 3)),
]


def having(framework):
    return [c for c in CASES if framework in c.values[2]]


def _split_key_biases(tree):
    """``(tree without attention key biases, {path: key bias})``."""
    found = {}

    def strip(node, path=""):
        if not isinstance(node, dict):
            return node
        out = {}
        for name, value in node.items():
            if name == "key" and isinstance(value, dict) and "bias" in value:
                found[f"{path}/{name}/bias"] = value["bias"]
                value = {k: v for k, v in value.items() if k != "bias"}
            out[name] = strip(value, f"{path}/{name}")
        return out

    return strip(tree), found


def check_sequence(record, what, out, grads, dx, expected):
    """``test_layers.check``, with the key biases held to the model's largest gradient."""
    want_out, want_grads, want_dx = expected
    grads, mine = _split_key_biases(grads)
    want_grads, theirs = _split_key_biases(want_grads)
    check(record, what, out, grads, dx, (want_out, want_grads, want_dx))
    largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(want_grads))
    for path, got in mine.items():
        result = parity.compare(f"{what} gradient {path} (zero in exact arithmetic)", got,
                                theirs[path], rtol=0.0, atol=GRAD_ATOL_FRACTION * largest)
        record("key bias gradient", f"{result.max_abs_error / largest:.1e} of the largest")
        assert result.passed, str(result)


def run(framework, module, build, shape, ints, scale, record):
    model = build()
    params, state = non_trivial(model, shape)
    x = np.random.default_rng(11).normal(size=(4, *shape)).astype(np.float32) * scale
    out, _, _ = ours(model, params, state, x, np.zeros(1, np.float32))
    r = np.random.default_rng(5).normal(size=out.shape).astype(np.float32)
    theirs = theirs_torch if framework == "torch" else theirs_keras
    check_sequence(record, framework, *ours(model, params, state, x, r),
                   theirs(module, model, shape, params, state, x, r))


@pytest.mark.parametrize("build, shape, frameworks, ints, scale", having("torch"))
def test_sequence_layer_vs_torch(torch, build, shape, frameworks, ints, scale, record):
    run("torch", torch, build, shape, ints, scale, record)


@pytest.mark.parametrize("build, shape, frameworks, ints, scale", having("keras"))
def test_sequence_layer_vs_keras(tf, keras, build, shape, frameworks, ints, scale, record):
    run("keras", tf, build, shape, ints, scale, record)

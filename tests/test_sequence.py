"""Sequence layers without the reference frameworks: shapes, masks, states, and bad input.

The live comparisons with PyTorch and Keras are in tests/parity/test_sequence_*.py; here a
masked batch is checked against each sequence run alone, which is what PyTorch's packed
sequences compute.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn import data, nn

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 6, 4)).astype(np.float32)
LENGTHS = np.array([6, 2, 4])


def built(layer, shape=(6, 4), seed=0):
    return layer, nn.init(layer, seed, shape)


@pytest.mark.parametrize("make", [nn.SimpleRNN, nn.LSTM, nn.GRU], ids=["rnn", "lstm", "gru"])
def test_output_shapes_and_states(make):
    layer, params = built(make(5, return_sequences=True, return_state=True))
    out, *states = layer.apply(params, X)
    assert out.shape == (3, 6, 5)
    assert [s.shape for s in states] == [(3, 5)] * (2 if make is nn.LSTM else 1)
    # The last output is the final state h.
    np.testing.assert_array_equal(out[:, -1], states[0])
    last, params_last = built(make(5))
    assert last.apply(params_last, X).shape == (3, 5)


@pytest.mark.parametrize("make", [nn.LSTM, nn.GRU, nn.SimpleRNN], ids=["lstm", "gru", "rnn"])
def test_lengths_give_what_each_sequence_gives_alone(make):
    layer, params = built(make(5, return_sequences=True, return_state=True,
                               zero_output_for_mask=True))
    out, *states = layer.apply(params, {"inputs": X, "lengths": LENGTHS})
    for i, n in enumerate(LENGTHS):
        alone, *alone_states = layer.apply(params, X[i:i + 1, :n])
        np.testing.assert_allclose(out[i, :n], alone[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(out[i, n:], 0.0)  # PyTorch's padded output
        for state, expected in zip(states, alone_states):
            np.testing.assert_allclose(state[i], expected[0], rtol=1e-6, atol=1e-6)


def test_a_masked_step_repeats_the_previous_output_as_keras_does():
    layer, params = built(nn.LSTM(5, return_sequences=True))
    out = layer.apply(params, {"inputs": X, "lengths": LENGTHS})
    np.testing.assert_array_equal(out[1, 2:], np.broadcast_to(out[1, 1], (4, 5)))
    # A mask may skip any step: the state is carried over it.
    mask = np.ones((3, 6), bool)
    mask[0, 2] = False
    skipped = layer.apply(params, {"inputs": X, "mask": mask})
    alone = layer.apply(params, np.delete(X[:1], 2, axis=1))
    np.testing.assert_allclose(skipped[0, -1], alone[0, -1], rtol=1e-6, atol=1e-6)


def test_bidirectional_with_lengths_reads_each_sequence_from_its_last_real_step():
    layer, params = built(nn.Bidirectional(nn.GRU(3, return_sequences=True)))
    out = layer.apply(params, {"inputs": X, "lengths": LENGTHS})
    assert out.shape == (3, 6, 6)
    for i, n in enumerate(LENGTHS):
        alone = layer.apply(params, X[i:i + 1, :n])
        np.testing.assert_allclose(out[i, :n], alone[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(out[i, n:], 0.0)


def test_mask_value_is_kerass_masking():
    padded, lengths = data.pad_sequences([X[i, :n] for i, n in enumerate(LENGTHS)])
    layer, params = built(nn.LSTM(4, mask_value=0.0))
    expected = nn.LSTM(4).apply(params, {"inputs": padded, "lengths": lengths})
    np.testing.assert_array_equal(layer.apply(params, padded), expected)


def test_initial_state_continues_a_sequence():
    layer, params = built(nn.LSTM(5, return_sequences=True, return_state=True))
    whole, h, c = layer.apply(params, X)
    first, h1, c1 = layer.apply(params, X[:, :3])
    second, h2, c2 = layer.apply(params, {"inputs": X[:, 3:], "initial_state": (h1, c1)})
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c2, c, rtol=1e-6, atol=1e-6)


def test_go_backwards_time_major_and_unroll_compute_the_same_function():
    layer, params = built(nn.GRU(5, return_sequences=True))
    forward = layer.apply(params, X)
    backwards = nn.GRU(5, return_sequences=True, go_backwards=True).apply(params, X[:, ::-1])
    np.testing.assert_allclose(backwards, forward, rtol=1e-6, atol=1e-6)
    major = nn.GRU(5, return_sequences=True, time_major=True).apply(params, X.swapaxes(0, 1))
    np.testing.assert_allclose(major.swapaxes(0, 1), forward, rtol=1e-6, atol=1e-6)
    unrolled = nn.GRU(5, return_sequences=True, unroll=4).apply(params, X)
    np.testing.assert_allclose(unrolled, forward, rtol=1e-5, atol=1e-6)


def test_the_input_projection_is_one_product_outside_the_loop():
    layer, params = built(nn.LSTM(8))
    text = jax.jit(lambda p, x: layer.apply(p, x)).lower(params, X).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    # One product of the whole (batch 3, time 6, features 4) input with the (4, 32) kernel,
    # and in the loop body only the (batch, units) x (units, 4 units) recurrent product.
    assert len([d for d in dots if "tensor<3x6x4xf32>" in d]) == 1
    assert len([d for d in dots if "(tensor<3x8xf32>, tensor<8x32xf32>)" in d]) == 1
    assert len(dots) == 2 and text.count("stablehlo.while") == 1


def test_recurrent_layers_in_a_graph_model_and_their_states():
    x = nn.Input((6, 4))
    out, h, c = nn.LSTM(5, return_sequences=True, return_state=True)(x)
    model = nn.Model(x, nn.Concatenate()([nn.GRU(3)(out), h, c]))
    params = nn.init(model, 0, (6, 4))
    assert nn.apply(model, params, X)[0].shape == (3, 13)
    assert nn.count_params(params) == 4 * 5 * (4 + 5 + 1) + 3 * 3 * (5 + 3 + 2)


def test_conventions_initialize_as_their_frameworks():
    keras_lstm = nn.init(nn.LSTM(4), 0, (6, 3))
    np.testing.assert_array_equal(keras_lstm["bias"], [0] * 4 + [1] * 4 + [0] * 8)
    torch_lstm = nn.init(nn.LSTM(4, convention="torch"), 0, (6, 3))
    assert sorted(torch_lstm) == ["bias", "kernel", "recurrent_bias", "recurrent_kernel"]
    assert all(float(jnp.abs(v).max()) <= 0.5 for v in torch_lstm.values())  # U(+-1/sqrt(4))
    gru = nn.init(nn.GRU(4), 0, (6, 3))
    assert sorted(gru) == ["bias", "kernel", "recurrent_bias", "recurrent_kernel"]
    assert "recurrent_bias" not in nn.init(nn.GRU(4, reset_after=False), 0, (6, 3))


def test_attention_masks_in_both_conventions_agree():
    layer, params = built(nn.MultiHeadAttention(2, 3), (5, 4))
    x = X[:, :5]
    padding = np.array([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    torch_style = layer.apply(params, {"query": x, "key_padding_mask": padding})
    keras_style = layer.apply(params, {"query": x, "attention_mask": np.broadcast_to(
        ~padding[:, None, :], (3, 5, 5))})
    np.testing.assert_array_equal(torch_style, keras_style)
    # The padding keys change nothing: cut them off and the real queries see the same.
    np.testing.assert_allclose(torch_style[1, :3], layer.apply(params, x[1:2, :3])[0],
                               rtol=1e-5, atol=1e-6)
    causal = nn.MultiHeadAttention(2, 3, causal=True).apply(params, x)
    blocked = np.triu(np.ones((5, 5), bool), 1)
    np.testing.assert_array_equal(causal, layer.apply(params, {"query": x, "attn_mask": blocked}))
    additive = layer.apply(params, {"query": x, "attn_mask": np.where(blocked, -np.inf, 0.0)
                                    .astype(np.float32)})
    np.testing.assert_allclose(additive, causal, rtol=1e-6, atol=1e-6)


def test_a_query_with_every_key_masked_gets_uniform_weights_not_nan():
    layer = nn.MultiHeadAttention(1, 2, return_attention_scores=True)
    params = nn.init(layer, 0, (3, 2))
    out, weights = layer.apply(params, {"query": X[:1, :3, :2],
                                        "key_padding_mask": np.ones((1, 3), bool)})
    assert np.isfinite(out).all()
    np.testing.assert_allclose(weights, 1 / 3, rtol=1e-6)


def test_cross_attention_takes_query_value_and_key():
    layer = nn.MultiHeadAttention(2, 3, output_dim=7)
    params = nn.init(layer, 0, ((5, 4), (6, 2)))
    out = layer.apply(params, (X[:, :5], X[:, :, :2]))
    assert out.shape == (3, 5, 7)
    assert params["key"]["kernel"].shape == (2, 2, 3)


def test_transformer_block_dropout_only_in_training():
    layer, params = built(nn.TransformerEncoderLayer(4, 2, 8, dropout=0.5), (6, 4))
    a = layer.apply(params, X, key=jax.random.key(1), train=True)
    b = layer.apply(params, X, key=jax.random.key(2), train=True)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(layer.apply(params, X), layer.apply(params, X))


def test_tokens_positions_and_pooling():
    tokens = nn.serial(nn.ClassToken(), nn.PositionEmbedding(7), nn.SinusoidalPositionEmbedding())
    params = nn.init(tokens, 0, (6, 4))
    out = tokens.apply(params, X)
    assert out.shape == (3, 7, 4)
    table = nn.sequence.sinusoids(7, 4)
    np.testing.assert_allclose(table[3], [np.sin(3), np.cos(3), np.sin(3 / 100), np.cos(3 / 100)],
                               rtol=1e-6)
    np.testing.assert_array_equal(nn.TakeStep(0).apply({}, out), out[:, 0])
    np.testing.assert_allclose(nn.GlobalAveragePooling1D().apply({}, X), X.mean(1), rtol=1e-6)


def test_pad_sequences():
    padded, lengths = data.pad_sequences([[1, 2, 3], [4]], value=-1)
    np.testing.assert_array_equal(padded, [[1, 2, 3], [4, -1, -1]])
    np.testing.assert_array_equal(lengths, [3, 1])
    pre, _ = data.pad_sequences([[1, 2, 3], [4]], maxlen=4, padding="pre")
    np.testing.assert_array_equal(pre, [[0, 1, 2, 3], [0, 0, 0, 4]])
    with pytest.raises(ValueError, match="longer than maxlen 2"):
        data.pad_sequences([[1, 2, 3]], maxlen=2)
    with pytest.raises(ValueError, match="same features"):
        data.pad_sequences([np.zeros((2, 3)), np.zeros((2, 4))])


# --- bad input: each names the argument and the fix ---------------------------------------


def test_rnn_inputs_without_a_time_axis_are_refused():
    with pytest.raises(ValueError, match=r"LSTM needs per-example inputs \(time, features\), "
                                         r"got shape \(28,\): a batch of vectors has no time"):
        nn.init(nn.LSTM(4), 0, (28,))
    layer, params = built(nn.LSTM(4))
    with pytest.raises(ValueError, match=r"LSTM inputs must be \(batch, time, features\), got "
                                         r"shape \(3, 4\): no time axis"):
        layer.apply(params, X[:, 0])


def test_rnn_features_that_differ_from_the_layers_are_refused():
    layer, params = built(nn.GRU(4))
    with pytest.raises(ValueError, match=r"GRU was built for 4 features, got inputs of shape "
                                         r"\(3, 6, 5\)"):
        layer.apply(params, np.zeros((3, 6, 5), np.float32))


def test_time_and_batch_swapped_is_named_when_the_shapes_say_so():
    layer, params = built(nn.LSTM(4))
    swapped = X.swapaxes(0, 1)  # (time 6, batch 3, features) given as batch-first
    with pytest.raises(ValueError, match=r"lengths must be \(batch,\) = \(6,\) integers, got "
                                         r"int\d+ of shape \(3,\); time and batch look swapped"):
        layer.apply(params, {"inputs": swapped, "lengths": LENGTHS})
    with pytest.raises(ValueError, match=r"mask must be \(batch, time\) = \(6, 3\), got shape "
                                         r"\(3, 6\); time and batch look swapped"):
        layer.apply(params, {"inputs": swapped, "mask": np.ones((3, 6), bool)})
    with pytest.raises(ValueError, match="initial_state arrays must be .*time and batch look "
                                         "swapped"):
        layer.apply(params, {"inputs": swapped,
                             "initial_state": (np.zeros((3, 4)), np.zeros((3, 4)))})
    with pytest.raises(ValueError, match=r"PyTorch's \(num_layers \* directions, batch, units\)"):
        layer.apply(params, {"inputs": X, "initial_state": (np.zeros((1, 3, 4)),) * 2})


def test_ragged_lists_of_sequences_are_refused_naming_pad_sequences():
    layer, params = built(nn.LSTM(4))
    with pytest.raises(TypeError, match=r"LSTM inputs must be one array or a dict, got a list of "
                                        r"2 sequences of lengths \[2, 5\]: pad them .* "
                                        r"fnlearn.data.pad_sequences"):
        layer.apply(params, [X[0, :2], X[0, :5]])


def test_bad_attention_masks_are_refused():
    layer, params = built(nn.MultiHeadAttention(2, 3), (5, 4))
    x = X[:, :5]
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, queries, keys\) = "
                                         r"\(3, 5, 5\) .* a \(batch, keys\) padding mask is "
                                         "PyTorch's key_padding_mask"):
        layer.apply(params, {"query": x, "attention_mask": np.ones((3, 5), bool)})
    with pytest.raises(ValueError, match="key_padding_mask must be bool .* got int32: an int "
                                         "mask is ambiguous"):
        layer.apply(params, {"query": x, "key_padding_mask": np.zeros((3, 5), np.int32)})
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(batch, keys\) = \(3, 5\), "
                                         r"got shape \(5, 3\): batch and keys look swapped"):
        layer.apply(params, {"query": x, "key_padding_mask": np.zeros((5, 3), bool)})
    with pytest.raises(ValueError, match=r"attn_mask must be \(queries, keys\) = \(5, 5\) or "
                                         r"\(batch \* heads, queries, keys\) = \(6, 5, 5\)"):
        layer.apply(params, {"query": x, "attn_mask": np.zeros((3, 5, 5), bool)})
    with pytest.raises(ValueError, match="attention_mask must be bool .* got float32"):
        layer.apply(params, {"query": x, "attention_mask": np.ones((5, 5), np.float32)})


def test_settings_without_a_counterpart_are_refused():
    with pytest.raises(ValueError, match=r"GRU\(reset_after=False\) has no PyTorch counterpart"):
        nn.GRU(4, reset_after=False, convention="torch")
    with pytest.raises(TypeError, match="Bidirectional wraps a SimpleRNN, LSTM or GRU"):
        nn.Bidirectional(nn.Dense(3))
    with pytest.raises(ValueError, match="nhead 3 must divide d_model 8"):
        nn.TransformerEncoderLayer(8, 3)

"""The conventions where PyTorch and Keras differ, each against the live frameworks: padded
sequences (PyTorch's packed sequences, Keras's Masking), returned and initial states,
attention masks, the Transformer block's padding mask, and weights both ways, bit for bit.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_layers import check, non_trivial, ours, theirs_keras, theirs_torch
from test_sequence_layers import check_sequence

from fnlearn import nn, parity
from fnlearn.parity import twins_seq

pytestmark = pytest.mark.parity

LENGTHS = np.array([7, 3, 5, 1])


def padded(features=3, seed=2):
    """Four sequences of LENGTHS real steps, zero-padded to 7 (what pad_sequences gives)."""
    x = np.random.default_rng(seed).normal(size=(4, 7, features)).astype(np.float32)
    x[np.arange(7)[None] >= LENGTHS[:, None]] = 0.0
    return x


def run_on(framework, module, build, x, record):
    """``test_sequence_layers.run`` on these inputs (not random normal ones)."""
    model = build()
    shape = x.shape[1:]
    params, state = non_trivial(model, shape)
    out, _, _ = ours(model, params, state, x, np.zeros(1, np.float32))
    r = np.random.default_rng(5).normal(size=out.shape).astype(np.float32)
    theirs = theirs_torch if framework == "torch" else theirs_keras
    check_sequence(record, framework, *ours(model, params, state, x, r),
                   theirs(module, model, shape, params, state, x, r))


MASKED_TORCH = {
    # The twin packs the padded batch (pack_padded_sequence) and pads the result back.
    "lstm_sequences_zero_padding": lambda: nn.serial(nn.LSTM(
        4, return_sequences=True, mask_value=0.0, zero_output_for_mask=True, convention="torch")),
    "gru_last_output_is_h_n": lambda: nn.serial(nn.GRU(4, mask_value=0.0, convention="torch")),
    "simple_rnn_keras_repeats_outputs": lambda: nn.serial(nn.SimpleRNN(
        4, return_sequences=True, mask_value=0.0, convention="torch")),
    "bidirectional_lstm_sequences": lambda: nn.serial(nn.Bidirectional(nn.LSTM(
        3, return_sequences=True, mask_value=0.0, convention="torch"))),
    "bidirectional_gru_last": lambda: nn.serial(nn.Bidirectional(nn.GRU(
        3, mask_value=0.0, convention="torch")), nn.Dense(2)),
}
MASKED_KERAS = {
    # The twin is Keras's Masking(0.0) before the layer.
    "lstm_sequences": lambda: nn.serial(nn.LSTM(4, return_sequences=True, mask_value=0.0)),
    "gru_classic_last": lambda: nn.serial(nn.GRU(4, reset_after=False, mask_value=0.0)),
    "bidirectional_gru_sequences": lambda: nn.serial(nn.Bidirectional(nn.GRU(
        3, return_sequences=True, mask_value=0.0))),
    "simple_rnn_zero_outputs": lambda: nn.serial(nn.SimpleRNN(
        4, return_sequences=True, mask_value=0.0, zero_output_for_mask=True)),
}


@pytest.mark.parametrize("name", sorted(MASKED_TORCH))
def test_padded_sequences_vs_torch_packed_sequences(torch, name, record):
    run_on("torch", torch, MASKED_TORCH[name], padded(), record)


@pytest.mark.parametrize("name", sorted(MASKED_KERAS))
def test_padded_sequences_vs_keras_masking(tf, keras, name, record):
    run_on("keras", tf, MASKED_KERAS[name], padded(), record)


def test_states_returned_and_given_vs_torch(torch, record):
    layer = nn.LSTM(4, return_sequences=True, return_state=True, convention="torch")
    params = nn.init(layer, 1, (7, 3))
    x = padded()
    rng = np.random.default_rng(4)
    h0, c0 = (rng.normal(size=(4, 4)).astype(np.float32) for _ in range(2))
    r = [rng.normal(size=s).astype(np.float32) for s in ((4, 7, 4), (4, 4), (4, 4))]

    def loss(p, states):
        outs = layer.apply(p, {"inputs": x, "initial_state": states})
        return sum(jnp.sum(o * w) for o, w in zip(outs, r)), outs

    (_, outs), (grads, state_grads) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        params, (h0, c0))
    module = parity.to_torch_module(nn.serial(layer), (7, 3), {"lstm_0": params})[0]
    states = [torch.from_numpy(s).requires_grad_(True) for s in (h0, c0)]
    expected = module(torch.from_numpy(x), initial_state=states)
    sum((o * torch.from_numpy(w)).sum() for o, w in zip(expected, r)).backward()
    holder = copy.deepcopy(module)
    for (_, p), (_, g) in zip(holder.named_parameters(), module.named_parameters()):
        p.data = g.grad.clone()
    their_grads = parity.variables_from_torch(holder, model=nn.serial(layer),
                                              input_shape=(7, 3))[0]
    for what, got, want in [("outputs", outs[0], expected[0]), ("h", outs[1], expected[1]),
                            ("c", outs[2], expected[2])]:
        result = parity.compare(what, np.asarray(got), want.detach().numpy(), rtol=1e-5,
                                atol=1e-6)
        assert result.passed, str(result)
    check(record, "torch", np.asarray(outs[0]), {"lstm_0": grads}, None,
          (expected[0].detach().numpy(), their_grads, None))
    for got, want in zip(state_grads, states):
        result = parity.compare("initial state gradient", np.asarray(got), want.grad.numpy(),
                                rtol=1e-5, atol=1e-6 * float(want.grad.abs().max()))
        assert result.passed, str(result)


def test_states_returned_and_given_vs_keras(tf, keras, record):
    layer = nn.GRU(4, return_sequences=True, return_state=True)
    params = nn.init(layer, 1, (7, 3))
    x, h0 = padded(), np.random.default_rng(4).normal(size=(4, 4)).astype(np.float32)
    out, h = layer.apply(params, {"inputs": x, "initial_state": h0})
    inputs, state = keras.Input((7, 3)), keras.Input((4,))
    gru = keras.layers.GRU(4, return_sequences=True, return_state=True)
    keras_model = keras.Model([inputs, state], gru(inputs, initial_state=[state]))
    gru.set_weights(parity.REGISTRY["gru"].to_keras(params, {}, layer))
    expected = keras_model([x, h0])
    for what, got, want in (("outputs", out, expected[0]), ("h", h, expected[1])):
        result = parity.compare(what, np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-6)
        record(what, f"max rel error {result.max_rel_error:.1e}")
        assert result.passed, str(result)


def test_attention_masks_vs_torch(torch, record):
    layer = nn.MultiHeadAttention(2, 3, init="torch")
    params = nn.init(layer, 1, ((5, 6), (4, 6)))
    rng = np.random.default_rng(6)
    q, kv = (rng.normal(size=(3, n, 6)).astype(np.float32) for n in (5, 4))
    padding = np.array([[False] * 4, [False, False, True, True], [False, True, True, True]])
    additive = rng.normal(size=(5, 4)).astype(np.float32)
    r = rng.normal(size=(3, 5, 6)).astype(np.float32)

    def loss(p, q, kv):
        out = layer.apply(p, {"query": q, "value": kv, "key_padding_mask": padding,
                              "attn_mask": additive})
        return jnp.sum(out * r), out

    (_, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(params, q, kv)
    module = torch.nn.MultiheadAttention(6, 2, batch_first=True)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in
                            twins_seq.attention_to_torch(params).items()})
    tq, tkv = (torch.from_numpy(a).requires_grad_(True) for a in (q, kv))
    expected = module(tq, tkv, tkv, key_padding_mask=torch.from_numpy(padding),
                      attn_mask=torch.from_numpy(additive), need_weights=False)[0]
    (expected * torch.from_numpy(r)).sum().backward()
    their = twins_seq.attention_from_torch(
        {n: p.grad for n, p in module.named_parameters()}, 2)
    check_sequence(record, "torch", np.asarray(out), grads[0], np.asarray(grads[1]),
                   (expected.detach().numpy(), their, tq.grad.numpy()))
    np.testing.assert_allclose(grads[2], tkv.grad.numpy(), rtol=1e-5,
                               atol=1e-6 * float(tkv.grad.abs().max()))


def test_cross_attention_with_a_mask_vs_keras(tf, keras, record):
    layer = nn.MultiHeadAttention(2, 3, 4, output_dim=5)
    params = nn.init(layer, 1, ((5, 6), (4, 3), (4, 2)))
    rng = np.random.default_rng(6)
    q, v, k = (rng.normal(size=(3, *s)).astype(np.float32) for s in ((5, 6), (4, 3), (4, 2)))
    allowed = rng.uniform(size=(3, 5, 4)) > 0.3
    allowed[..., 0] = True
    out = layer.apply(params, {"query": q, "value": v, "key": k, "attention_mask": allowed})
    mha = keras.layers.MultiHeadAttention(2, 3, 4, output_shape=5)
    expected = mha(q, v, k, attention_mask=allowed)
    mha.set_weights(parity.REGISTRY["multi_head_attention"].to_keras(params, {}, layer))
    expected = mha(q, v, k, attention_mask=allowed).numpy()
    result = parity.compare("cross attention", np.asarray(out), expected, rtol=1e-5,
                            atol=1e-5 * float(np.abs(expected).max()))
    record("forward", f"max rel error {result.max_rel_error:.1e}")
    assert result.passed, str(result)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_block_padding_mask_vs_torch(torch, norm_first, record):
    layer = nn.TransformerEncoderLayer(6, 2, 12, 0.0, "gelu", norm_first=norm_first)
    params = nn.init(layer, 1, (7, 6))
    x = padded(6)
    padding = np.arange(7)[None] >= LENGTHS[:, None]
    r = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)

    def loss(p, x):
        out = layer.apply(p, {"inputs": x, "key_padding_mask": padding})
        return jnp.sum(out * r), out

    (_, out), (grads, dx) = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x)
    module = parity.to_torch_module(nn.serial(layer), (7, 6), {"transformer_encoder_0": params})
    xt = torch.from_numpy(x).requires_grad_(True)
    expected = module[0](xt, src_key_padding_mask=torch.from_numpy(padding))
    (expected * torch.from_numpy(r)).sum().backward()
    holder = copy.deepcopy(module)
    for (_, p), (_, g) in zip(holder.named_parameters(), module.named_parameters()):
        p.data = g.grad.clone()
    their = parity.variables_from_torch(holder, model=nn.serial(layer), input_shape=(7, 6))[0]
    check_sequence(record, "torch", np.asarray(out), {"transformer_encoder_0": grads},
                   np.asarray(dx), (expected.detach().numpy(), their, xt.grad.numpy()))


ROUND_TRIPS = {
    "torch": [nn.LSTM(4, return_sequences=True, convention="torch"),
              nn.Bidirectional(nn.GRU(3, convention="torch")),
              nn.SimpleRNN(3, "relu", convention="torch"),
              nn.MultiHeadAttention(2, 3, init="torch"),
              nn.TransformerEncoderLayer(6, 2, 8, norm_first=True),
              nn.TransformerEncoderLayer(6, 3, 8, bias=False), nn.ClassToken(),
              nn.PositionEmbedding(9)],
    "keras": [nn.LSTM(4, return_sequences=True), nn.Bidirectional(nn.GRU(3, reset_after=False)),
              nn.GRU(3), nn.SimpleRNN(3), nn.MultiHeadAttention(2, 3, 4, output_dim=5),
              nn.TransformerEncoderLayer(6, 2, 8, norm_first=True),
              nn.TransformerEncoderLayer(6, 3, 8, bias=False), nn.ClassToken(),
              nn.PositionEmbedding(9)],
}


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_weights_round_trip_bit_for_bit(framework, torch, keras):
    for layer in ROUND_TRIPS[framework]:
        model = nn.serial(layer)
        params = nn.init(model, 3, (6, 6))
        if framework == "torch":
            module = parity.to_torch_module(model, (6, 6), params)
            back = parity.variables_from_torch(module, model=model, input_shape=(6, 6))[0]
        else:
            keras_model = parity.to_keras_model(model, (6, 6), params)
            back = parity.variables_from_keras(keras_model, model=model, input_shape=(6, 6))[0]
        assert jax.tree.structure(back) == jax.tree.structure(params), layer
        for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
            np.testing.assert_array_equal(got, want, err_msg=repr(layer))


def test_torch_biases_summed_into_a_keras_convention_lstm(torch):
    source = nn.serial(nn.LSTM(4, convention="torch"))
    params = nn.init(source, 2, (7, 3))
    module = parity.to_torch_module(source, (7, 3), params)
    target = nn.serial(nn.LSTM(4))
    converted = parity.variables_from_torch(module, model=target, input_shape=(7, 3))[0]
    assert sorted(converted["lstm_0"]) == ["bias", "kernel", "recurrent_kernel"]
    x = padded()
    np.testing.assert_allclose(target.apply(converted, x), source.apply(params, x), rtol=1e-6,
                               atol=1e-6)


def test_dropout2d_on_features_drops_single_elements(torch):
    # PyTorch 2.13's Dropout2d on (N, C) inputs (mnist_rnn's): feature dropout with noise
    # shaped like the input, i.e. element by element, and a deprecation warning.
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="Received a 2-D input to dropout2d"):
        y = torch.nn.Dropout2d(0.5).train()(torch.ones(2000, 64)).numpy()
    assert set(np.unique(y)) == {0.0, 2.0}
    assert abs((y == 0).mean() - 0.5) < 0.01
    assert not (y == 0).all(axis=1).any() and not (y == 0).all(axis=0).any()

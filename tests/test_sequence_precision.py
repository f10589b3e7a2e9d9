"""The sequence layers under ``mixed_bfloat16``: bfloat16 products, float32 state, read from
the jaxpr; errors against float32 measured on random data; a short mixed-precision fit.

``nn.with_policy(model, "mixed_bfloat16")`` sets ``dtype="bfloat16"`` on the recurrent
layers, ``MultiHeadAttention`` and ``TransformerEncoderLayer`` as on Dense: every matrix
product takes bfloat16 operands and sums in float32, while the recurrent state (h, c), the
gates, the softmax and LayerNorm statistics stay float32 (docs/training.md's table).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_policy import BF16, F32, equations

import fnlearn as fl
from fnlearn import nn
from fnlearn.nn import precision

LAYERS = {
    "lstm": lambda **kw: nn.LSTM(6, return_sequences=True, **kw),
    "gru": lambda **kw: nn.GRU(6, return_sequences=True, **kw),
    "gru_classic": lambda **kw: nn.GRU(6, reset_after=False, **kw),
    "simple_rnn": lambda **kw: nn.SimpleRNN(6, convention="torch", **kw),
    "bidirectional": lambda **kw: nn.Bidirectional(nn.LSTM(3, return_sequences=True, **kw)),
    "multi_head_attention": lambda **kw: nn.MultiHeadAttention(2, 3, causal=True, **kw),
    "transformer_encoder": lambda **kw: nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, **kw),
}
SHAPE = (7, 4)  # (time, features) per example


def mixed(layer):
    """``layer`` as ``with_policy`` rebuilds it inside a model (outputs not widened)."""
    return nn.with_policy(nn.serial(layer), "mixed_bfloat16").children[0]


def jaxpr_of(fn, *args):
    return jax.make_jaxpr(fn)(*args).jaxpr


def dots(jaxpr):
    """``(operand dtypes, preferred_element_type)`` of every ``dot_general``."""
    return {(tuple(str(v.aval.dtype) for v in eqn.invars),
             str(eqn.params["preferred_element_type"]))
            for eqn in equations(jaxpr) if eqn.primitive.name == "dot_general"}


def scan_carries(jaxpr):
    """The float dtypes of every ``scan``'s carried values."""
    found = set()
    for eqn in equations(jaxpr):
        if eqn.primitive.name == "scan":
            start = eqn.params["num_consts"]
            carry = eqn.invars[start:start + eqn.params["num_carry"]]
            found |= {str(v.aval.dtype) for v in carry if jnp.issubdtype(v.aval.dtype,
                                                                         jnp.floating)}
    return found


def primitive_dtypes(jaxpr, name):
    return {str(eqn.invars[0].aval.dtype) for eqn in equations(jaxpr)
            if eqn.primitive.name == name}


def data(shape=(3, *SHAPE), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


BF16_PRODUCTS = {(("bfloat16", "bfloat16"), "float32")}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_products_are_bfloat16_with_float32_sums_forward_and_backward(kind):
    layer = mixed(LAYERS[kind]())
    params = nn.init(layer, 0, SHAPE)
    x = data()

    def loss(p):
        return jnp.sum(nn.apply(layer, p, x)[0].astype(jnp.float32) ** 2)

    assert dots(jaxpr_of(loss, params)) == BF16_PRODUCTS
    assert dots(jaxpr_of(jax.grad(loss), params)) == BF16_PRODUCTS
    out = jax.eval_shape(lambda p: nn.apply(layer, p, x)[0], params)
    assert out.dtype == BF16  # outputs in the compute dtype, as Dense's
    # The model under the policy returns float32 (as with every layer).
    policy_model = nn.with_policy(LAYERS[kind](), "mixed_bfloat16")
    assert jax.eval_shape(lambda p: nn.apply(policy_model, p, x)[0], params).dtype == F32


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_classic", "simple_rnn", "bidirectional"])
def test_the_recurrent_state_and_gates_stay_float32(kind):
    layer = mixed(LAYERS[kind]())
    params = nn.init(layer, 0, SHAPE)
    x = {"inputs": data(), "lengths": np.array([7, 4, 1])}
    forward = jaxpr_of(lambda p: nn.apply(layer, p, x)[0], params)
    assert scan_carries(forward) == {"float32"}
    assert primitive_dtypes(forward, "tanh") == {"float32"}
    if kind != "simple_rnn":
        assert primitive_dtypes(forward, "logistic") == {"float32"}
    backward = jaxpr_of(jax.grad(lambda p: jnp.sum(nn.apply(layer, p, x)[0])), params)
    assert scan_carries(backward) == {"float32"}


def test_attention_softmax_and_layer_norm_statistics_stay_float32():
    attention = mixed(LAYERS["multi_head_attention"]())
    params = nn.init(attention, 0, SHAPE)
    forward = jaxpr_of(lambda p: nn.apply(attention, p, data())[0], params)
    assert primitive_dtypes(forward, "exp") == {"float32"}
    assert primitive_dtypes(forward, "reduce_max") == {"float32"}
    block = mixed(LAYERS["transformer_encoder"]())
    params = nn.init(block, 0, SHAPE)
    forward = jaxpr_of(lambda p: nn.apply(block, p, data())[0], params)
    assert primitive_dtypes(forward, "exp") == {"float32"}
    assert primitive_dtypes(forward, "reduce_sum") == {"float32"}  # LayerNorm statistics
    assert primitive_dtypes(forward, "rsqrt") == {"float32"}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_parameters_stay_float32_and_param_dtype_bfloat16_stores_bfloat16(kind):
    reference = nn.init(LAYERS[kind](), 3, SHAPE)
    under_policy = nn.init(mixed(LAYERS[kind]()), 3, SHAPE)
    assert jax.tree.all(jax.tree.map(lambda a, b: a.dtype == b.dtype == F32
                                     and bool(jnp.array_equal(a, b)), reference, under_policy))
    stored = nn.init(LAYERS[kind](param_dtype="bfloat16"), 3, SHAPE)
    assert {leaf.dtype for leaf in jax.tree.leaves(stored)} == {BF16}
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a.astype(BF16), b)),
                                     reference, stored))
    # bfloat16 parameters with bfloat16 inputs compute in bfloat16 (dtype None follows them),
    # and their gradients come back bfloat16.
    layer = LAYERS[kind](param_dtype="bfloat16")
    x = data().astype(jnp.bfloat16)
    grads = jax.grad(lambda p: jnp.sum(nn.apply(layer, p, x)[0].astype(jnp.float32)))(stored)
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {BF16}
    assert dots(jaxpr_of(lambda p: nn.apply(layer, p, x)[0], stored)) == BF16_PRODUCTS


# Relative error (norm of the difference over the norm of the float32 result) of the
# bfloat16 layer's outputs, and the largest over its parameters' gradients (of
# sum(sin(outputs))), against float32's: same parameters, random N(0, 1) inputs (batch
# 16, 28 steps of 28 features). bfloat16 keeps 8 significant bits (a rounding is up to
# 3.9e-3 relative); a gradient sums hundreds of terms of both signs, so its relative
# error is larger than the outputs'. Measured (outputs, gradients):
ACCURACY = {
    "lstm": (lambda: nn.LSTM(64, convention="torch"), 2.7e-3, 2.7e-3),
    "gru": (lambda: nn.GRU(64), 2.9e-3, 3.7e-3),
    "simple_rnn": (lambda: nn.SimpleRNN(32), 3.6e-3, 7.0e-3),
    "multi_head_attention": (lambda: nn.MultiHeadAttention(4, 8), 4.7e-3, 6.0e-3),
    "transformer_encoder": (lambda: nn.TransformerEncoderLayer(28, 4, 64, dropout=0.0),
                            1.9e-3, 3.2e-2),
}


def relative_error(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return np.linalg.norm(ours - reference) / np.linalg.norm(reference)


@pytest.mark.parametrize("kind", sorted(ACCURACY))
def test_bfloat16_outputs_and_gradients_are_close_to_float32(kind):
    build, output_error, gradient_error = ACCURACY[kind]
    x = data((16, 28, 28), seed=1)
    model = nn.serial(build())
    params = {model.config["names"][0]: nn.init(build(), 0, (28, 28))}
    results = {}
    for policy in ("float32", "mixed_bfloat16"):
        layer = nn.with_policy(model, policy)

        def loss(p, layer=layer):
            return jnp.sum(jnp.sin(nn.apply(layer, p, x)[0]))

        results[policy] = nn.apply(layer, params, x)[0], jax.grad(loss)(params)
    (reference, reference_grads), (ours, grads) = results["float32"], results["mixed_bfloat16"]
    assert ours.dtype == F32
    assert relative_error(ours, reference) < 2 * output_error
    largest = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(reference_grads))
    for path, ours_g in jax.tree_util.tree_leaves_with_path(grads):
        reference_g = reference_grads
        for key in path:
            reference_g = reference_g[key.key]
        assert ours_g.dtype == F32 and bool(jnp.all(jnp.isfinite(ours_g)))
        if "key" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
            # Adding the key bias adds one number to all of a query's scores: the softmax
            # does not change, and its gradient is zero but for rounding, in both dtypes.
            assert float(jnp.max(jnp.abs(ours_g))) < 1e-3 * largest
            continue
        assert float(jnp.max(jnp.abs(ours_g))) > 0  # every parameter gets a gradient
        assert relative_error(ours_g, reference_g) < 2 * gradient_error, path


def test_masks_return_state_and_go_backwards_in_bfloat16():
    x = data((4, 9, 5), seed=2)
    lengths = np.array([9, 6, 2, 4])
    inputs = {"inputs": x, "lengths": lengths}
    for build in (lambda: nn.LSTM(8, return_state=True, go_backwards=True),
                  lambda: nn.GRU(8, return_state=True, return_sequences=True),
                  lambda: nn.SimpleRNN(8, return_state=True, zero_output_for_mask=True,
                                       return_sequences=True)):
        params = nn.init(build(), 0, (9, 5))
        reference = nn.apply(build(), params, inputs)[0]
        ours = nn.apply(mixed(build()), params, inputs)[0]
        assert len(ours) == len(reference) and {o.dtype for o in ours} == {BF16}
        for a, b in zip(ours, reference):
            assert relative_error(a, b) < 1e-2
    # Bidirectional: masked steps of the output sequence are exactly zero in bfloat16 too.
    build = lambda: nn.Bidirectional(nn.GRU(4, return_sequences=True))  # noqa: E731
    params = nn.init(build(), 0, (9, 5))
    ours = nn.apply(mixed(build()), params, inputs)[0]
    assert ours.dtype == BF16 and ours.shape == (4, 9, 8)
    padding = np.arange(9)[None, :] >= lengths[:, None]
    assert not np.any(np.asarray(ours, np.float32)[padding])
    assert relative_error(ours, nn.apply(build(), params, inputs)[0]) < 1e-2
    # Attention and the encoder block with padding masks.
    padding_mask = np.arange(9)[None, :] >= lengths[:, None]
    for build, masked in (
            (lambda: nn.MultiHeadAttention(2, 4, causal=True),
             {"query": x, "key_padding_mask": padding_mask}),
            (lambda: nn.TransformerEncoderLayer(5, 1, 16, dropout=0.0, norm_first=True),
             {"inputs": x, "key_padding_mask": padding_mask})):
        params = nn.init(build(), 0, (9, 5))
        ours = nn.apply(mixed(build()), params, masked)[0]
        assert ours.dtype == BF16
        assert relative_error(ours, nn.apply(build(), params, masked)[0]) < 1e-2


def test_an_explicit_float32_sequence_layer_stays_float32_under_the_policy():
    model = nn.serial(nn.Dense(4), nn.LSTM(3, dtype="float32"))
    mixed_model = nn.with_policy(model, "mixed_bfloat16")
    lstm = mixed_model.children[1]
    params = nn.init(lstm, 0, SHAPE)
    x = data().astype(jnp.bfloat16)
    assert dots(jaxpr_of(lambda p: nn.apply(lstm, p, x)[0], params)) == {
        (("float32", "float32"), "float32")}
    assert jax.eval_shape(lambda p: nn.apply(lstm, p, x)[0], params).dtype == F32


def test_the_mnist_rnn_trains_under_mixed_bfloat16():
    (x, y), _ = fl.data.load_mnist(source="sample")
    losses = {}
    for policy in ("float32", "mixed_bfloat16"):
        state, history = fl.fit(fl.models.torch_mnist_rnn(), x[:512], y[:512], loss="nll_loss",
                                optimizer="adam", epochs=2, batch_size=64, verbose=0,
                                policy=policy)
        losses[policy] = history.history["loss"]
    mixed_losses = losses["mixed_bfloat16"]
    assert mixed_losses[1] < mixed_losses[0]
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {F32}
    # The two runs start from the same parameters and stay close: measured epoch losses
    # 2.2822, 2.1264 (float32) and 2.2822, 2.1275 (mixed), 5.3e-4 relative at most.
    np.testing.assert_allclose(mixed_losses, losses["float32"], rtol=5e-3)


@pytest.mark.parametrize("build, message", [
    (lambda: nn.LSTM(4, dtype="int8"), "LSTM dtype must be a float dtype"),
    (lambda: nn.GRU(4, param_dtype="float64x"), "GRU param_dtype must be a float dtype"),
    (lambda: nn.SimpleRNN(4, dtype="int32"), "SimpleRNN dtype must be a float dtype"),
    (lambda: nn.MultiHeadAttention(2, 2, dtype=3), "MultiHeadAttention dtype must be"),
    (lambda: nn.MultiHeadAttention(2, 2, param_dtype="uint8"),
     "MultiHeadAttention param_dtype must be"),
    (lambda: nn.TransformerEncoderLayer(4, 2, dtype="bf16"),
     "TransformerEncoderLayer dtype must be"),
    (lambda: nn.TransformerEncoderLayer(4, 2, param_dtype="int8"),
     "TransformerEncoderLayer param_dtype must be"),
])
def test_bad_dtypes_are_refused_naming_the_layer_and_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_the_16_bit_einsum_sums_in_float32_forward_and_backward():
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.normal(size=(2, 5, 3, 64)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 6, 3, 64)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, 3, 5, 6)), jnp.float32)
    spec = "bthk,bshk->bhts"
    low = [np.asarray(a.astype(jnp.bfloat16), np.float64) for a in (q, k, g)]
    scores, vjp = jax.vjp(lambda q, k: precision.einsum(spec, q, k, jnp.bfloat16), q, k)
    dq, dk = vjp(g)
    assert (scores.dtype, dq.dtype, dk.dtype) == (F32, F32, F32)
    # Exact float64 products of the bfloat16-rounded operands: float32 sums agree to ~1e-6.
    np.testing.assert_allclose(scores, np.einsum(spec, low[0], low[1]), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dq, np.einsum("bhts,bshk->bthk", low[2], low[1]), rtol=2e-5,
                               atol=2e-5)
    np.testing.assert_allclose(dk, np.einsum("bthk,bhts->bshk", low[0], low[2]), rtol=2e-5,
                               atol=2e-5)
    # A contraction XLA's CPU runtime refuses in the form jnp.einsum gives it.
    kernel = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32)
    np.testing.assert_allclose(
        precision.einsum("kn,amk->nam", kernel, x, jnp.bfloat16),
        np.einsum("kn,amk->nam", *(np.asarray(a.astype(jnp.bfloat16), np.float64)
                                    for a in (kernel, x))), rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="indices must be distinct"):
        precision.einsum("bij,jk->bk", q[0, 0], k[0, 0, 0], jnp.bfloat16)

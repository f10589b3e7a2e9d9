"""Precision policies: which dtype each layer computes in, read from the jaxpr, not assumed.

``nn.with_policy(model, "mixed_bfloat16")`` (and ``fit(..., policy=...)``): products and
convolutions take bfloat16 operands and sum in float32, activations between layers are
bfloat16, softmax/log-softmax, normalization statistics and losses are float32, and the
parameters and optimizer state stay float32 (docs/training.md has the table).
"""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import fnlearn as fl
from fnlearn import nn
from fnlearn.nn import precision

BF16, F32 = np.dtype(jnp.bfloat16), np.dtype(np.float32)
PRODUCTS = ("dot_general", "conv_general_dilated")


def equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs inside it (scans, conds, custom VJPs), of
    the CPU branch where the program chooses by platform (``lax.platform_dependent``)."""
    for eqn in jaxpr.eqns:
        yield eqn
        platforms = eqn.params.get("branches_platforms")
        if platforms is None:
            inner = jax.extend.core.jaxprs_in_params(eqn.params)
        else:
            cpu = next(i for i, p in enumerate(platforms) if p is None or "cpu" in p)
            inner = [eqn.params["branches"][cpu].jaxpr]
        for sub in inner:
            yield from equations(sub)


def products(fn, *args):
    """``(operand dtypes, summing dtype)`` of every product and convolution ``fn`` runs."""
    found = set()
    for eqn in equations(jax.make_jaxpr(fn)(*args).jaxpr):
        if eqn.primitive.name in PRODUCTS:
            operands = tuple(str(v.aval.dtype) for v in eqn.invars)
            found.add((operands, str(eqn.outvars[0].aval.dtype)))
    return found


def dtypes_of(primitive, fn, *args):
    """The dtypes of the first operand of every ``primitive`` equation inside ``fn``."""
    return {str(eqn.invars[0].aval.dtype)
            for eqn in equations(jax.make_jaxpr(fn)(*args).jaxpr)
            if eqn.primitive.name == primitive}


def every_layer(model):
    """``model``'s layers (a serial's children, depth first)."""
    for layer in model.children:
        yield from (every_layer(layer) if layer.children else [layer])


def mixed_model():
    return nn.serial(nn.Normalize(0, 255), nn.Conv2D(4, 3, activation="relu"),
                     nn.BatchNorm(), nn.MaxPool2D(), nn.Conv2D(8, 3, activation="relu"),
                     nn.Flatten(), nn.Dropout(0.5), nn.Dense(16, "relu"), nn.LayerNorm(),
                     nn.Dense(10), nn.LogSoftmax())


# kind -> (output dtype, products' operand dtype or None for no product)
EXPECTED = {
    "normalize": (F32, None), "conv2d": (BF16, BF16), "batch_norm": (BF16, None),
    "max_pool2d": (BF16, None), "flatten": (BF16, None), "dropout": (BF16, None),
    "dense": (BF16, BF16), "layer_norm": (BF16, None), "log_softmax": (F32, None),
}


def test_mixed_bfloat16_layer_by_layer_dtypes_from_the_jaxpr():
    model = nn.with_policy(mixed_model(), "mixed_bfloat16")
    _, params, state = nn.init_with_state(model, 0, (12, 12, 1))
    x = jnp.zeros((4, 12, 12, 1), jnp.uint8)
    names = model.config["names"]
    seen = set()
    for name, layer in zip(names, every_layer(model)):
        def run(p, x, layer=layer, name=name):
            return nn.apply(layer, p, x, state=state.get(name), key=jax.random.key(0),
                            train=True)[0]

        layer_params = params.get(name, {})
        out = jax.eval_shape(run, layer_params, x)
        want_out, want_operands = EXPECTED[layer.kind]
        assert out.dtype == want_out, (name, out.dtype)
        found = products(run, layer_params, x)
        if name == "conv2d_0":
            # One input channel: a sum of taps times kernel rows (cpu_conv's tapwise path),
            # of bfloat16-rounded operands multiplied and summed in float32.
            assert not found
            assert dtypes_of("mul", run, layer_params, x) == {"float32"}
            assert {"bfloat16"} <= dtypes_of("convert_element_type", run, layer_params, x)
        elif want_operands is None:
            assert not found, (name, found)
        else:
            # bfloat16 operands, float32 sums: forward here, backward in the next test.
            assert found == {(("bfloat16", "bfloat16"), "float32")}, (name, found)
        if layer.kind in ("batch_norm", "layer_norm"):
            assert dtypes_of("reduce_sum", run, layer_params, x) == {"float32"}, name
        seen.add(layer.kind)
        x = jnp.zeros(out.shape, out.dtype)
    assert seen == set(EXPECTED)


def test_the_training_step_multiplies_bfloat16_forward_and_backward_and_updates_float32():
    model = nn.serial(nn.Normalize(0, 255), nn.Conv2D(8, 3, activation="relu"), nn.Flatten(),
                      nn.Dense(10))
    optimizer = fl.optim.keras_adam()
    state = fl.init_state(model, optimizer, (8, 8, 1))
    x, y = jnp.zeros((4, 8, 8, 1), jnp.uint8), jnp.zeros((4,), jnp.int32)

    def step(state, x, y, policy):
        return fl.train_step(state, x, y, model=nn.with_policy(model, policy),
                             loss="sparse_categorical_crossentropy", optimizer=optimizer)

    mixed = products(lambda *a: step(*a, "mixed_bfloat16"), state, x, y)
    assert mixed == {(("bfloat16", "bfloat16"), "float32")}
    assert products(lambda *a: step(*a, "float32"), state, x, y) == {
        (("float32", "float32"), "float32")}
    new_state, logs = jax.eval_shape(lambda *a: step(*a, "mixed_bfloat16"), state, x, y)
    floats = [leaf.dtype for leaf in jax.tree.leaves((new_state.params, new_state.opt_state))
              if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert floats and set(floats) == {F32}
    assert logs["loss"].dtype == F32


def test_master_weights_and_optimizer_state_stay_float32_and_start_from_the_same_bits():
    model = fl.models.article_mlp()
    mixed = nn.with_policy(model, "mixed_bfloat16")
    assert jax.tree.all(jax.tree.map(lambda a, b: a.dtype == b.dtype == F32
                                     and bool(jnp.array_equal(a, b)),
                                     nn.init(model, 3, (28, 28)), nn.init(mixed, 3, (28, 28))))
    (x, y), _ = fl.data.load_mnist(source="sample")
    state, history = fl.fit(model, x[:256], y[:256], loss="sparse_categorical_crossentropy",
                            optimizer="adam", metrics=["accuracy"], epochs=2, batch_size=64,
                            verbose=0, policy="mixed_bfloat16")
    dtypes = {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))
              if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert dtypes == {F32}
    assert history.history["loss"][1] < history.history["loss"][0]
    probabilities = fl.predict(model, state.params, x[:5], policy="mixed_bfloat16")
    assert probabilities.dtype == F32
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-6)


def test_an_explicit_layer_dtype_wins_over_the_policy():
    model = nn.serial(nn.Dense(8, "relu"), nn.Dense(4, dtype="float32"))
    mixed = nn.with_policy(model, "mixed_bfloat16")
    first, last = mixed.children
    params = nn.init(mixed, 0, (5,))
    x = jnp.ones((2, 5))
    assert products(lambda p: first.apply(p, x), params["dense_0"]) == {
        (("bfloat16", "bfloat16"), "float32")}
    h = jnp.ones((2, 8), jnp.bfloat16)
    assert products(lambda p: last.apply(p, h), params["dense_1"]) == {
        (("float32", "float32"), "float32")}
    assert last.apply(params["dense_1"], h).dtype == F32


def test_graph_models_are_rebuilt_with_shared_layers_kept_shared():
    shared = nn.Dense(6, "relu", name="shared")
    a, b = nn.Input((4,), name="a"), nn.Input((4,), name="b")
    head = nn.Dense(3, name="head")(nn.Concatenate()([shared(a), shared(b)]))
    model = nn.Model((a, b), head)
    mixed = nn.with_policy(model, "mixed_bfloat16")
    spec = mixed.config["graph"]
    assert len(spec.layers) == 3 and spec.names == model.config["graph"].names
    params = nn.init(mixed, 0, ((4,), (4,)))
    assert jax.tree.structure(params) == jax.tree.structure(nn.init(model, 0, ((4,), (4,))))
    x = (jnp.ones((2, 4)), jnp.ones((2, 4)))
    assert products(lambda p: mixed.apply(p, x), params) == {
        (("bfloat16", "bfloat16"), "float32")}
    assert mixed.apply(params, x).dtype == F32  # the model's outputs come back float32


def test_policied_models_compare_equal_and_float32_undoes_the_policy():
    model = fl.models.keras_convnet()
    mixed = nn.with_policy(model, "mixed_bfloat16")
    assert mixed == nn.with_policy(fl.models.keras_convnet(), "mixed_bfloat16")
    assert hash(mixed) == hash(nn.with_policy(fl.models.keras_convnet(), "mixed_bfloat16"))
    assert mixed != model
    assert nn.with_policy(mixed, "float32") == model
    assert nn.policy_of(mixed).name == "mixed_bfloat16" and nn.policy_of(model) is None


def test_a_part_with_its_own_policy_keeps_it():
    inner = nn.with_policy(nn.serial(nn.Dense(4)), "mixed_bfloat16")
    own = nn.Layer(lambda key, shape: (shape, {}), lambda p, x, **_: x * 2.0, "double")
    model = nn.with_policy(nn.serial(own, inner, nn.Dense(2)), "float32")
    assert model.children[1] is inner and model.children[0] is own


def test_unknown_policies_and_dtypes_are_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="policy must be one of"):
        nn.with_policy(fl.models.article_mlp(), "mixed_bfloat")
    with pytest.raises(ValueError, match="policy must be one of"):
        nn.with_policy(fl.models.article_mlp(), "float16")
    with pytest.raises(ValueError, match="Dense dtype must be a float dtype"):
        nn.Dense(3, dtype="int8")
    with pytest.raises(ValueError, match="Conv2D param_dtype"):
        nn.Conv2D(3, 3, param_dtype="float64x")
    with pytest.raises(ValueError, match="policy= needs a model"):
        fl.fit(None, np.zeros((4, 2)), np.zeros(4), step=lambda s, b, k: (s, {}),
               state=fl.TrainState.create({}, ()), policy="mixed_bfloat16")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16])
def test_fit_evaluate_and_predict_take_16_bit_input_arrays(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(dtype)
    y = (rng.normal(size=64) > 0).astype(np.int32)
    model = nn.serial(nn.Dense(8, "relu"), nn.Dense(2, "softmax"))
    state, _ = fl.fit(model, x, y, loss="sparse_categorical_crossentropy", optimizer="adam",
                      epochs=1, batch_size=16, verbose=0, policy="mixed_bfloat16")
    results = fl.evaluate(model, state.params, x, y, loss="sparse_categorical_crossentropy",
                          policy="mixed_bfloat16")
    assert np.isfinite(results["loss"])
    assert fl.predict(model, state.params, x).shape == (64, 2)


def test_the_16_bit_product_sums_in_float32_and_gives_the_kernel_a_float32_gradient():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(64, 300)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(300, 5)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
    low = [np.asarray(a.astype(jnp.bfloat16), np.float64) for a in (x, kernel, g)]
    y, vjp = jax.vjp(lambda x, k: precision.product(x, k, jnp.bfloat16), x, kernel)
    dx, dk = vjp(g)
    assert (y.dtype, dx.dtype, dk.dtype) == (F32, F32, F32)
    # Exact float64 products of the bfloat16-rounded operands: float32 sums agree to ~1e-6;
    # sums in bfloat16 would be off by ~1e-3.
    np.testing.assert_allclose(y, low[0] @ low[1], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dk, low[0].T @ low[2], rtol=2e-5, atol=2e-5)
    want_dx = (low[2] @ low[1].T).astype(np.float32).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(dx.astype(jnp.bfloat16)), want_dx)


def test_the_mixed_mlp_recipe_learns_as_well_as_float32_on_the_sample():
    (x, y), (x_test, y_test) = fl.data.load_mnist(source="sample")
    accuracies = {}
    for policy in ("float32", "mixed_bfloat16"):
        state, _ = fl.fit(fl.models.article_mlp(), x[:3000], y[:3000],
                          loss="sparse_categorical_crossentropy", optimizer=fl.optim.keras_adam(),
                          epochs=3, batch_size=32, verbose=0, policy=policy)
        accuracies[policy] = fl.evaluate(fl.models.article_mlp(), state.params, x_test, y_test,
                                         loss="sparse_categorical_crossentropy",
                                         metrics=["accuracy"], policy=policy)["accuracy"]
    assert accuracies["float32"] > 0.8
    assert abs(accuracies["mixed_bfloat16"] - accuracies["float32"]) <= 0.03, accuracies


# Sequence layers get the policy's dtype as Dense does: bfloat16 products with float32
# sums and bfloat16 outputs (tests/test_sequence_precision.py reads the rest: the float32
# state, softmax and statistics, the errors against float32).
SEQUENCE_LAYERS = {
    "lstm": nn.LSTM(5, return_sequences=True), "gru": nn.GRU(3, return_sequences=True),
    "bidirectional": nn.Bidirectional(nn.SimpleRNN(3, mask_value=0.0, return_sequences=True)),
    "multi_head_attention": nn.MultiHeadAttention(2, 2, causal=True),
    "transformer_encoder": nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0),
}


@pytest.mark.parametrize("kind", sorted(SEQUENCE_LAYERS))
def test_sequence_layers_compute_in_bfloat16_under_a_policy(kind):
    model = nn.serial(nn.Dense(4), SEQUENCE_LAYERS[kind], nn.GlobalAveragePooling1D())
    mixed = nn.with_policy(model, "mixed_bfloat16")
    x = np.random.default_rng(0).normal(size=(2, 6, 4)).astype(np.float32)
    params = nn.init(model, 0, (6, 4))
    inner, name = mixed.children[1], model.config["names"][1]
    h = jnp.asarray(x, jnp.bfloat16)
    out = jax.eval_shape(lambda p: nn.apply(inner, p, h), params[name])
    assert jax.tree.leaves(out)[0].dtype == BF16
    assert products(lambda p: nn.apply(inner, p, h), params[name]) == {
        (("bfloat16", "bfloat16"), "float32")}
    ours, reference = (jax.tree.leaves(nn.apply(m, params, x))[0] for m in (mixed, model))
    assert ours.dtype == F32
    np.testing.assert_allclose(ours, reference, atol=2e-2)

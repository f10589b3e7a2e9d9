"""Flax modules as fnlearn layers: linen (``from_flax``) and NNX (``from_nnx``), with BatchNorm.

Each is checked against the module's own ``apply`` (linen) or call (NNX): the same
outputs, the same updated batch statistics in training, the statistics used as they
are in inference.
"""

from __future__ import annotations

import functools

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fnlearn as fl
from fnlearn import nn

RNG = np.random.default_rng(5)
X = RNG.normal(size=(96, 4)).astype(np.float32)
Y = ((X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0)).astype(np.int32)
LOGITS_LOSS = functools.partial(fl.losses.sparse_categorical_crossentropy, from_logits=True)


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(p, q) for p, q in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


class LinenNet(linen.Module):
    @linen.compact
    def __call__(self, x, train: bool = False):
        x = linen.Dense(16)(x)
        x = linen.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = linen.Dropout(0.25, deterministic=not train)(linen.relu(x))
        return linen.Dense(3)(x)


class NnxNet(nnx.Module):
    def __init__(self, dropout: float, rngs: nnx.Rngs):
        self.dense = nnx.Linear(4, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(self.dropout(jax.nn.relu(self.norm(self.dense(x)))))


def test_linen_batch_stats_are_model_state_as_the_modules_own_apply_has_them():
    module = LinenNet()
    layer = nn.from_flax(module, train_argument="train")
    _, params, state = nn.init_with_state(layer, 0, (4,))
    own = module.init(jax.random.key(0), jnp.zeros((1, 4)), train=False)
    assert leaves_equal(params, own["params"]) and list(state) == ["batch_stats"]
    assert leaves_equal(state["batch_stats"], own["batch_stats"])

    key = jax.random.key(7)
    out, new_state = nn.apply(layer, params, X, state=state, key=key, train=True)
    expected, updates = module.apply(own, X, train=True, rngs={"dropout": key},
                                     mutable=["batch_stats"])
    np.testing.assert_array_equal(out, expected)
    assert leaves_equal(new_state, updates)
    assert not leaves_equal(new_state, state)  # training moved the running statistics

    # Inference: the statistics as they are, no dropout, and the state comes back unchanged.
    inferred, same_state = nn.apply(layer, params, X, state=new_state)
    np.testing.assert_array_equal(inferred, module.apply({"params": params, **new_state}, X))
    assert same_state is new_state


def test_a_linen_batch_norm_module_trains_with_fit_and_predicts_with_its_statistics():
    module = LinenNet()
    model = nn.from_flax(module, train_argument="train")
    # 96 examples in batches of 32: no padded rows enter the module's batch statistics.
    state, history = fl.fit(model, X, Y, loss=LOGITS_LOSS, optimizer="adam", epochs=8,
                            batch_size=32, metrics=["accuracy"], verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    predicted = fl.predict(model, state.params, X, model_state=state.model_state)
    expected = module.apply({"params": state.params, **state.model_state}, X, train=False)
    np.testing.assert_allclose(predicted, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="pass model_state=state.model_state"):
        fl.predict(model, state.params, X)


def test_a_linen_module_without_batch_stats_has_an_empty_state(tmp_path):
    model = nn.from_flax(linen.Dense(3))
    state, _ = fl.fit(model, X, Y, loss=LOGITS_LOSS, optimizer="adam", verbose=0)
    assert state.model_state == {}
    # Nothing to forget: export needs no model_state.
    fl.export_model(model, state.params, (4,), np.float32, tmp_path / "dense.fnx")
    np.testing.assert_allclose(fl.load_exported(tmp_path / "dense.fnx")(X),
                               fl.predict(model, state.params, X), rtol=1e-6, atol=1e-6)


def test_nnx_parameters_and_batch_stats_as_the_modules_own_call_has_them():
    module = NnxNet(0.0, nnx.Rngs(0))
    layer = nn.from_nnx(module)
    shape, params, state = nn.init_with_state(layer, 123, (4,))
    assert shape == (3,)
    assert leaves_equal(params, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    assert sorted(state["norm"]) == ["mean", "var"]

    out, new_state = nn.apply(layer, params, X, state=state, key=jax.random.key(1), train=True)
    module.train()
    np.testing.assert_allclose(out, module(X), rtol=1e-6, atol=1e-6)  # the module's own call
    assert leaves_equal(new_state, nnx.to_pure_dict(nnx.state(module, nnx.BatchStat)))

    module.eval()
    inferred, same_state = nn.apply(layer, params, X, state=new_state)
    np.testing.assert_allclose(inferred, module(X), rtol=1e-6, atol=1e-6)
    assert same_state is new_state


def test_nnx_dropout_draws_from_the_key_it_is_given():
    layer = nn.from_nnx(NnxNet(0.5, nnx.Rngs(0)))
    _, params, state = nn.init_with_state(layer, 0, (4,))

    def train(seed):
        return nn.apply(layer, params, X, state=state, key=jax.random.key(seed), train=True)[0]

    np.testing.assert_array_equal(train(1), train(1))
    assert not np.array_equal(train(1), train(2))
    inference = [nn.apply(layer, params, X, state=state)[0] for _ in range(2)]
    np.testing.assert_array_equal(*inference)


def test_an_nnx_module_trains_with_fit_and_its_values_go_back_into_the_module():
    module = NnxNet(0.1, nnx.Rngs(0))
    model = nn.from_nnx(module)
    state, history = fl.fit(model, X, Y, loss=LOGITS_LOSS, optimizer="adam", epochs=8,
                            batch_size=32, metrics=["accuracy"], verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # Trained values back into the user's module (as docs/rosetta.md shows): same outputs.
    for variable_type, values in ((nnx.Param, state.params), (nnx.BatchStat, state.model_state)):
        variables = nnx.state(module, variable_type)
        nnx.replace_by_pure_dict(variables, values)
        nnx.update(module, variables)
    module.eval()
    np.testing.assert_allclose(fl.predict(model, state.params, X, model_state=state.model_state),
                               module(X), rtol=1e-5, atol=1e-6)


def test_an_nnx_module_is_told_to_be_wrapped():
    with pytest.raises(TypeError, match=r"model is a flax.nnx Module \(NnxNet\): wrap it with "
                                        r"fnlearn.nn.from_nnx\(module\)"):
        fl.fit(NnxNet(0.0, nnx.Rngs(0)), X, Y, loss=LOGITS_LOSS, optimizer="adam", verbose=0)

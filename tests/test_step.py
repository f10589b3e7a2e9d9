"""The public step and epoch, and model state, through every path that carries a TrainState."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnlearn as fl
from fnlearn import nn

LOSS = "sparse_categorical_crossentropy"


def blobs(n=300, seed=0):
    centers = np.random.default_rng(0).normal(size=(3, 8)) * 3
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    return (centers[y] + rng.normal(size=(n, 8))).astype(np.float32), y


def RunningMean(momentum: float = 0.5) -> nn.Layer:
    """A tiny stateful layer: passes x through, keeps a masked running mean of its features
    and counts the training batches it saw. In inference it adds the running mean, so the
    state visibly changes the outputs."""

    def init(key, input_shape):
        state = {"mean": jnp.zeros(input_shape[-1:], jnp.float32), "batches": jnp.int32(0)}
        return tuple(input_shape), {}, state

    def apply(params, x, *, state, key=None, train=False, mask=None):
        if not train:
            return x + state["mean"], state
        weights = jnp.ones(x.shape[:1]) if mask is None else mask.astype(jnp.float32)
        batch_mean = jnp.sum(x * weights[:, None], 0) / jnp.maximum(jnp.sum(weights), 1.0)
        mean = momentum * state["mean"] + (1 - momentum) * batch_mean
        return x, {"mean": mean, "batches": state["batches"] + 1}

    return nn.Layer(init, apply, "running_mean", {"momentum": momentum}, stateful=True)


def stateful_model():
    return nn.serial(RunningMean(), nn.Dense(16, "relu"), nn.Dense(3, "softmax"))


def test_a_stateful_layer_keeps_its_state_in_the_train_state_and_counts_masked_rows():
    x, y = blobs(300)
    state, _ = fl.fit(stateful_model(), x, y, loss=LOSS, optimizer="adam", epochs=2,
                      batch_size=64, verbose=0)
    # 300 examples in batches of 64: 5 steps an epoch (the last one 44 real rows).
    assert int(state.model_state["running_mean_0"]["batches"]) == 10 == int(state.step)
    # Replaying the same batches by hand gives the same running mean, padding excluded.
    replay = fl.init_state(stateful_model(), "adam", (8,))
    mean = np.zeros(8)
    for epoch in range(2):
        index, mask = fl.epoch_batches(replay._replace(step=jnp.int32(5 * epoch)), 300, 64)
        for rows, real in zip(np.asarray(index), np.asarray(mask)):
            mean = 0.5 * mean + 0.5 * x[rows[real]].mean(0)
    np.testing.assert_allclose(state.model_state["running_mean_0"]["mean"], mean, rtol=1e-5)


def test_stateless_models_have_an_empty_model_state_and_the_same_short_layers():
    state = fl.init_state(nn.serial(nn.Dense(4)), "sgd", (3,))
    assert state.model_state == {}
    assert not nn.Dense(4).stateful and stateful_model().stateful


def test_evaluate_predict_and_export_use_the_model_state(tmp_path):
    x, y = blobs(200)
    model = stateful_model()
    state, _ = fl.fit(model, x, y, loss=LOSS, optimizer="adam", epochs=1, batch_size=50,
                      verbose=0)
    with_state = fl.predict(model, state.params, x[:5], model_state=state.model_state)
    zero_state = jax.tree.map(jnp.zeros_like, state.model_state)
    without = fl.predict(model, state.params, x[:5], model_state=zero_state)
    assert not np.allclose(with_state, without), "the running mean must change the outputs"
    results = fl.evaluate(model, state.params, x, y, loss=LOSS, metrics=["accuracy"],
                          model_state=state.model_state)
    expected = np.mean(np.argmax(fl.predict(model, state.params, x,
                                            model_state=state.model_state), -1) == y)
    assert results["accuracy"] == pytest.approx(expected)
    path = fl.export_model(model, state.params, (8,), np.float32, tmp_path / "m.fnx",
                           model_state=state.model_state)
    np.testing.assert_array_equal(fl.load_exported(path)(x[:5]), with_state)


def test_checkpoint_resume_restores_the_model_state_bit_for_bit(tmp_path):
    x, y = blobs(200)
    kwargs = dict(loss=LOSS, optimizer="adam", batch_size=50, verbose=0)
    straight, _ = fl.fit(stateful_model(), x, y, epochs=3, **kwargs)
    fl.fit(stateful_model(), x, y, epochs=1, callbacks=[fl.ModelCheckpoint(tmp_path, verbose=0)],
           **kwargs)
    resumed, history = fl.fit(stateful_model(), x, y, epochs=3, resume=True,
                              callbacks=[fl.ModelCheckpoint(tmp_path, verbose=0)], **kwargs)
    assert history.epoch == [0, 1, 2]
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.model_state["running_mean_0"]["batches"]) == 12


def test_train_step_is_pure_and_skips_padding_and_non_finite_losses():
    x, y = blobs(64)
    model, optimizer = nn.serial(nn.Dense(3, "softmax")), fl.optim.torch_sgd(0.1)
    step = jax.jit(functools.partial(fl.train_step, model=model, loss=LOSS,
                                     optimizer=optimizer, metrics=("accuracy",)))
    state = fl.init_state(model, optimizer, (8,))
    after, logs = step(state, x, y)
    assert int(after.step) == 1 and not bool(logs["nonfinite"])
    assert 0 <= float(logs["accuracy"]) <= 1
    # Calling again with the same state gives the same bits: nothing hidden changed.
    again, _ = step(state, x, y)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    # An all-padding batch changes nothing, not even the step count.
    empty, logs = step(state, x, y, mask=np.zeros(64, bool))
    assert int(empty.step) == 0 and float(logs["loss"]) == 0.0
    # Padding rows do not count: 32 real rows give the update of those 32 rows alone.
    half, _ = step(state, x, y, mask=np.arange(64) < 32)
    alone, _ = step(state, x[:32], y[:32])
    np.testing.assert_allclose(half.params["dense_0"]["kernel"],
                               alone.params["dense_0"]["kernel"], rtol=1e-6)
    bad = x.copy()
    bad[3, 0] = np.inf
    stuck, logs = step(state, bad, y)
    assert bool(logs["nonfinite"]) and int(stuck.step) == 0
    np.testing.assert_array_equal(stuck.params["dense_0"]["kernel"],
                                  state.params["dense_0"]["kernel"])


def test_train_epoch_reports_progress_through_the_callable_it_is_given():
    x, y = blobs(300)
    model, optimizer = nn.serial(nn.Dense(3, "softmax")), fl.optim.keras_adam()
    seen = []
    epoch = jax.jit(functools.partial(
        fl.train_epoch, model=model, loss=LOSS, optimizer=optimizer, batch_size=32,
        progress=lambda steps, logs: seen.append((int(steps), float(logs["loss"]))),
        progress_every=3))
    state, logs = epoch(fl.init_state(model, optimizer, (8,)), jnp.asarray(x), jnp.asarray(y))
    jax.effects_barrier()
    # 300 examples in batches of 32: 10 steps, reported after steps 3, 6 and 9.
    assert [s for s, _ in seen] == [3, 6, 9]
    assert int(state.epoch) == 1 and int(state.step) == 10
    assert int(logs["nonfinite_step"]) == -1


def test_a_custom_loop_gives_fit_s_parameters_bit_for_bit():
    from experiments import custom_loop

    (x, y), _ = fl.data.load_mnist(source="sample")
    x, y = x[:2000], y[:2000]
    looped = custom_loop.train(x, y, epochs=2, batch_size=32, seed=3)
    fitted, _ = fl.fit(fl.models.article_mlp(), x, y, loss=LOSS, optimizer=fl.optim.keras_adam(),
                       metrics=["accuracy"], epochs=2, batch_size=32, seed=3, verbose=0)
    leaves = list(zip(jax.tree.leaves(looped), jax.tree.leaves(fitted)))
    assert len(leaves) == 23
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)


def test_mesh_placement_carries_the_model_state():
    x, y = blobs(200)
    kwargs = dict(loss=LOSS, optimizer="adam", epochs=2, batch_size=50, verbose=0)
    plain, _ = fl.fit(stateful_model(), x, y, **kwargs)
    meshed, _ = fl.fit(stateful_model(), x, y, mesh=fl.distributed.make_mesh(), **kwargs)
    assert meshed.model_state["running_mean_0"]["mean"].sharding.is_fully_replicated
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(meshed)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_loop_that_forgets_the_epoch_count_still_reshuffles():
    # The documented loop bumps state.epoch; one that forgets still draws a new order,
    # because the order comes from the step the epoch begins at.
    model, optimizer = nn.serial(nn.Dense(3, "softmax")), fl.optim.keras_adam()
    x, y = blobs(96)
    state = fl.init_state(model, optimizer, (8,))
    step = jax.jit(functools.partial(fl.train_step, model=model, loss=LOSS, optimizer=optimizer))
    orders = []
    for _ in range(2):
        index, mask = fl.epoch_batches(state, len(x), 32)
        orders.append(np.asarray(index))
        for rows, real in zip(index, mask):
            state, _ = step(state, x[rows], y[rows], mask=real)
    assert int(state.epoch) == 0 and int(state.step) == 6
    assert not np.array_equal(orders[0], orders[1])
    assert sorted(orders[1].ravel()) == list(range(96))


def test_one_seed_as_an_int_or_a_key_typed_or_raw():
    model, optimizer = nn.serial(nn.Dense(3, "softmax")), fl.optim.keras_adam()
    from_int = fl.init_state(model, optimizer, (8,), seed=5)
    typed = fl.init_state(model, optimizer, (8,), seed=jax.random.key(5))
    raw = fl.init_state(model, optimizer, (8,), seed=jax.random.PRNGKey(5))
    for other in (typed, raw):
        assert all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(from_int), jax.tree.leaves(other)))
    # A typed key in the state trains exactly as its raw data does.
    x, y = blobs(64)
    kwargs = dict(loss=LOSS, optimizer=optimizer, epochs=1, batch_size=16, verbose=0)
    plain, _ = fl.fit(model, x, y, state=from_int, **kwargs)
    typed_key = jax.random.wrap_key_data(from_int.key)
    keyed, _ = fl.fit(model, x, y, state=from_int._replace(key=typed_key), **kwargs)
    assert np.array_equal(plain.params["dense_0"]["kernel"], keyed.params["dense_0"]["kernel"])
    with pytest.raises(TypeError, match="seed must be an int"):
        fl.init_state(model, optimizer, (8,), seed=1.5)


def test_init_state_without_an_optimizer_names_restore_params():
    with pytest.raises(TypeError, match=r"fnlearn.restore_params\(directory, model"):
        fl.init_state(nn.serial(nn.Dense(3)), None, (8,))


def test_apply_gradients_is_the_update_the_step_ends_with():
    model, optimizer = nn.serial(nn.Dense(3, "softmax")), fl.optim.keras_adam()
    x, y = blobs(32)
    state = fl.init_state(model, optimizer, (8,))
    stepped, _ = fl.train_step(state, x, y, model=model, loss=LOSS, optimizer=optimizer)

    def loss(params):
        return jnp.mean(fl.losses.sparse_categorical_crossentropy(y, model.apply(params, x)))

    by_hand = fl.apply_gradients(state, jax.grad(loss)(state.params), optimizer)
    assert int(by_hand.step) == 1
    np.testing.assert_allclose(by_hand.params["dense_0"]["kernel"],
                               stepped.params["dense_0"]["kernel"], rtol=1e-6)

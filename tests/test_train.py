from functools import partial

import jax
import numpy as np
import pytest

import fnlearn as fl
from fnlearn import nn


def blobs(n=1000, seed=0):
    """Three separable Gaussian blobs in 8 dimensions (the same blobs for every seed)."""
    centers = np.random.default_rng(0).normal(size=(3, 8)) * 3
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    x = (centers[y] + rng.normal(size=(n, 8))).astype(np.float32)
    return x, y


def mlp():
    return nn.serial(nn.Dense(32, activation="relu"), nn.Dropout(0.1),
                     nn.Dense(3, activation="softmax"))


LOSS = fl.losses.sparse_categorical_crossentropy


def test_fit_learns_and_reports_keras_history():
    x, y = blobs()
    state, history = fl.fit(mlp(), x, y, loss=LOSS, optimizer=fl.optim.keras_adam(1e-2),
                            metrics=["accuracy"], epochs=5, batch_size=64,
                            validation_data=blobs(300, seed=1), verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.epoch == [0, 1, 2, 3, 4]
    assert history.history["val_accuracy"][-1] > 0.95
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert int(state.step) == 5 * 16 and int(state.epoch) == 5


def test_one_compilation_per_shape_whatever_the_epoch_count_and_verbosity():
    # 1000 examples in batches of 64: 15 full batches and a partial one of 40. The
    # epoch count is a runtime value: epochs=1, 2, 3 share one training program, and
    # verbose=2 (one epoch per call) reuses verbose=0's.
    x, y = blobs()
    model, optimizer = mlp(), fl.optim.keras_adam()
    expected = {0: "jit(_train_epochs)", 1: "jit(train_rows)", 2: None}
    for verbose, program in expected.items():
        counts = []
        for epochs in (1, 2, 3):
            with fl.count_compilations() as compiled:
                fl.fit(model, x, y, loss=LOSS, optimizer=optimizer, epochs=epochs,
                       batch_size=64, verbose=verbose)
            counts.append(compiled[program] if program else sum(compiled.values()))
        assert counts == ([1, 0, 0] if program else [0, 0, 0]), (verbose, counts)
    with fl.count_compilations() as compiled:
        fl.fit(model, x[:500], y[:500], loss=LOSS, optimizer=optimizer, epochs=1, batch_size=64,
               verbose=0)
    assert compiled["jit(_train_epochs)"] == 1, "a new data shape compiles once more"


def test_partial_last_batch_counts_every_example_exactly_once():
    # With a zero learning rate the epoch's loss must be the plain mean over all
    # 1000 examples: a dropped or doubled example in the padded last batch would show.
    x, y = blobs()
    model = nn.serial(nn.Dense(3, activation="softmax"))
    state, history = fl.fit(model, x, y, loss=LOSS, optimizer=fl.optim.torch_sgd(0.0),
                            metrics=["accuracy"], epochs=1, batch_size=64, verbose=0)
    probs = fl.predict(model, state.params, x)
    expected_loss = float(np.mean(np.asarray(LOSS(y, probs), np.float64)))
    expected_acc = float(np.mean(probs.argmax(-1) == y))
    assert history.history["loss"][0] == pytest.approx(expected_loss, rel=1e-6)
    assert history.history["accuracy"][0] == pytest.approx(expected_acc, abs=1e-7)
    assert int(state.step) == 16


def test_same_seed_gives_bit_identical_parameters():
    x, y = blobs()

    def run(seed):
        state, _ = fl.fit(mlp(), x, y, loss=LOSS, optimizer=fl.optim.keras_adam(),
                          epochs=2, batch_size=50, seed=seed, verbose=0)
        return jax.tree.leaves(jax.device_get(state.params))

    first, again, other = run(3), run(3), run(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_per_epoch_calls_and_one_call_give_identical_results():
    x, y = blobs(300)
    kwargs = dict(loss=LOSS, optimizer=fl.optim.keras_adam(), epochs=3, batch_size=32, seed=1)
    silent, h0 = fl.fit(mlp(), x, y, verbose=0, **kwargs)
    chatty, h2 = fl.fit(mlp(), x, y, verbose=2, **kwargs)
    for a, b in zip(jax.tree.leaves(silent.params), jax.tree.leaves(chatty.params)):
        np.testing.assert_array_equal(a, b)
    assert h0.history["loss"] == h2.history["loss"]


def test_full_batch_training_with_batch_size_none():
    x = np.linspace(0, 1, 50, dtype=np.float32)[:, None]
    y = 2 * x + 1
    state, history = fl.fit(nn.serial(nn.Dense(1)), x, y, loss="mse",
                            optimizer=fl.optim.torch_sgd(0.5), epochs=500, batch_size=None,
                            shuffle=False, verbose=0)
    assert int(state.step) == 500
    assert float(state.params["dense_0"]["kernel"][0, 0]) == pytest.approx(2.0, abs=1e-3)
    assert history.history["loss"][-1] < 1e-6


def test_verbose_1_shows_a_live_progress_bar_and_verbose_2_keras_lines(capsys):
    x, y = blobs(640)
    fl.fit(mlp(), x, y, loss=LOSS, optimizer=fl.optim.keras_adam(), metrics=["accuracy"],
           epochs=1, batch_size=32, verbose=1, progress_every=5)
    err = capsys.readouterr().err
    assert "20/20" in err and "loss" in err and "accuracy" in err
    fl.fit(mlp(), x, y, loss=LOSS, optimizer=fl.optim.keras_adam(), metrics=["accuracy"],
           epochs=2, batch_size=32, verbose=2)
    out = capsys.readouterr().out.splitlines()
    # The run's first line says where compiled programs are cached, and how to stop it.
    assert out[0].startswith("fnlearn: compiled programs are cached in ")
    assert "FNLEARN_COMPILATION_CACHE=0" in out[0]
    assert out[1] == "Epoch 1/2" and out[3] == "Epoch 2/2"
    assert out[2].startswith("20/20 - ") and " - loss: " in out[2] and " - accuracy: " in out[2]


def test_nan_loss_stops_training_naming_epoch_and_step():
    x, y = blobs(256)
    x[200] = 3e38  # overflows to inf in the first layer, in the 4th batch of 64
    with pytest.raises(fl.NonFiniteLossError, match=r"epoch 1, step 4 of 4") as error:
        fl.fit(nn.serial(nn.Dense(3, activation="softmax")), x, y,
               loss=partial(LOSS, from_logits=False), optimizer=fl.optim.keras_adam(),
               epochs=2, batch_size=64, shuffle=False, verbose=0)
    # The state handed back stopped before the bad step: three good updates, all finite.
    state = error.value.state
    assert int(state.step) == 3 and int(state.epoch) == 0
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))


def test_evaluate_and_predict_match_a_direct_computation():
    x, y = blobs(2500)
    model = mlp()
    params = nn.init(model, 0, (8,))
    probs = np.asarray(model.apply(params, x))
    np.testing.assert_allclose(fl.predict(model, params, x, batch_size=1000), probs, rtol=1e-6)
    result = fl.evaluate(model, params, x, y, loss=LOSS, metrics=["accuracy"], batch_size=1000)
    assert result["loss"] == pytest.approx(float(np.mean(LOSS(y, probs))), rel=1e-5)
    assert result["accuracy"] == pytest.approx(float(np.mean(probs.argmax(-1) == y)))


@pytest.mark.parametrize("change, error, message", [
    (dict(batch_size=0), ValueError, "batch_size must be a positive int or None, got 0"),
    (dict(batch_size=5000), ValueError, "batch_size 5000 is larger than the 1000 training"),
    (dict(y=np.zeros(999, np.int32)), ValueError, "x has 1000 examples but its labels have 999"),
    (dict(x=np.zeros((0, 8), np.float32), y=np.zeros(0, np.int32)), ValueError, "x is empty"),
    (dict(x=np.full((1000, 8), np.nan, np.float32)), ValueError, r"x contains NaN or inf"),
    (dict(x=np.array([["a"] * 8] * 1000)), TypeError, "x must be a numeric array, got dtype <U1"),
    (dict(y=np.full(1000, 3, np.int32)), ValueError, r"labels must be in \[0, 3\)"),
    (dict(epochs=-1), ValueError, "epochs must be a non-negative int"),
])
def test_bad_arguments_are_refused_before_compiling(change, error, message):
    x, y = blobs()
    kwargs = dict(x=x, y=y, loss=LOSS, optimizer=fl.optim.keras_adam(), verbose=0)
    kwargs.update(change)
    with pytest.raises(error, match=message):
        fl.fit(mlp(), **kwargs)


def test_wrong_input_shape_for_given_parameters_names_the_shapes():
    x, y = blobs()
    params = nn.init(mlp(), 0, (5,))
    with pytest.raises(ValueError, match=r"per-example shape \(8,\)"):
        fl.fit(mlp(), x, y, loss=LOSS, optimizer=fl.optim.keras_adam(), initial_params=params,
               verbose=0)


def test_state_and_initial_params_together_are_refused():
    x, y = blobs(100)
    model = mlp()
    state = fl.init_state(model, fl.optim.keras_adam(), (8,))
    with pytest.raises(ValueError, match="either state .* or initial_params, not both"):
        fl.fit(model, x, y, loss=LOSS, optimizer=fl.optim.keras_adam(), state=state,
               initial_params=state.params, verbose=0)


def test_continuing_from_a_state_counts_its_epochs():
    x, y = blobs(200)
    model, optimizer = mlp(), fl.optim.keras_adam()
    kwargs = dict(loss=LOSS, optimizer=optimizer, batch_size=50, seed=5, verbose=0)
    straight, _ = fl.fit(model, x, y, epochs=3, **kwargs)
    first, _ = fl.fit(model, x, y, epochs=1, **kwargs)
    continued, history = fl.fit(model, x, y, epochs=3, state=first, **kwargs)
    assert history.epoch == [1, 2] and int(continued.epoch) == 3
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(continued.params)):
        np.testing.assert_array_equal(a, b)


def test_resume_without_a_checkpoint_callback_is_refused():
    x, y = blobs(100)
    with pytest.raises(ValueError, match="resume=True needs a callback that restores a run"):
        fl.fit(mlp(), x, y, loss=LOSS, optimizer=fl.optim.keras_adam(), resume=True, verbose=0)


def test_validation_split_holds_out_the_last_fraction_before_shuffling():
    x, y = blobs(50)
    state, history = fl.fit(mlp(), x, y, loss=LOSS, optimizer=fl.optim.keras_adam(1e-2),
                            metrics=["accuracy"], epochs=2, batch_size=8,
                            validation_split=0.2, verbose=0)
    # 40 training rows: 5 steps an epoch (50 rows would be 7).
    assert int(state.step) == 2 * 5
    held_out = fl.evaluate(mlp(), state.params, x[40:], y[40:], loss=LOSS, metrics=["accuracy"])
    assert history.history["val_loss"][-1] == pytest.approx(held_out["loss"], rel=1e-6)
    first_rows = fl.evaluate(mlp(), state.params, x[:10], y[:10], loss=LOSS)
    assert first_rows["loss"] != pytest.approx(held_out["loss"], rel=1e-3)
    with pytest.raises(ValueError, match="not both"):
        fl.fit(mlp(), x, y, loss=LOSS, optimizer="adam", validation_split=0.1,
               validation_data=(x, y), verbose=0)


class StopAfter(fl.Callback):
    """Raises after ``batches`` batches of the epoch ``epoch``, as a killed run would stop."""

    batch_frequency = 1

    def __init__(self, epoch, batches):
        self.epoch, self.batches = epoch, batches

    def on_train_batch_end(self, batch, state, logs, history):
        if int(state.epoch) == self.epoch and batch == self.batches:
            raise KeyboardInterrupt


def test_in_memory_run_resumes_mid_epoch_bit_for_bit(tmp_path, capsys):
    x, y = blobs(200)
    model = mlp()
    kwargs = dict(loss=LOSS, optimizer=fl.optim.keras_adam(), metrics=["accuracy"], epochs=3,
                  batch_size=16, seed=1, verbose=0)
    whole, whole_history = fl.fit(model, x, y, **kwargs)
    with pytest.raises(KeyboardInterrupt):
        fl.fit(model, x, y, callbacks=[fl.ModelCheckpoint(tmp_path, save_every_steps=4,
                                                          verbose=0), StopAfter(1, 6)], **kwargs)
    resumed, history = fl.fit(model, x, y, resume=True, callbacks=[
        fl.ModelCheckpoint(tmp_path, save_every_steps=4, verbose=0)], **{**kwargs, "verbose": 2})
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)))
    assert history.history == whole_history.history
    # 13 batches an epoch; saved after batch 4 of epoch 2, so the header says where it resumed.
    assert "Epoch 2/3 (resumed after batch 4 of 13)" in capsys.readouterr().out


def test_a_streaming_metric_sums_over_the_epoch_not_per_batch_means():
    class Positives:
        """How many examples are predicted as class 0, over the whole epoch (not a mean)."""

        name = "class_0_count"

        def update(self, labels, predictions, weights):
            return jax.numpy.sum((predictions.argmax(-1) == 0) * weights)

        def result(self, sums):
            return sums

    x, y = blobs(100)
    model = mlp()
    state, history = fl.fit(model, x, y, loss=LOSS, optimizer=fl.optim.keras_adam(),
                            metrics=[Positives(), "accuracy"], epochs=1, batch_size=32,
                            verbose=0)
    predicted = fl.predict(model, state.params, x).argmax(-1)
    result = fl.evaluate(model, state.params, x, y, loss=LOSS, metrics=[Positives()])
    assert result["class_0_count"] == float(np.sum(predicted == 0))
    assert list(history.history) == ["loss", "class_0_count", "accuracy"]

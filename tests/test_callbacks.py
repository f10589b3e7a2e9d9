"""ModelCheckpoint and EarlyStopping: Keras semantics, and resuming a run exactly."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import fnlearn
from fnlearn import nn, optim
from fnlearn.callbacks import EarlyStopping, ModelCheckpoint
from fnlearn.checkpoint import restore_checkpoint
from fnlearn.state import History

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int32)


def model() -> nn.Layer:
    return nn.serial(nn.Dense(8, "relu"), nn.Dropout(0.2), nn.Dense(2, "softmax"))


def train(epochs: int, callbacks=(), resume: bool = False, **kwargs):
    return fnlearn.fit(model(), X[:64], Y[:64], loss="sparse_categorical_crossentropy",
                       optimizer=optim.keras_adam(0.01), metrics=["accuracy"], epochs=epochs,
                       batch_size=16, validation_data=(X[64:], Y[64:]), seed=3, verbose=0,
                       callbacks=callbacks, resume=resume, **kwargs)


def epochs_saved(directory) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_checkpoint_every_epoch_keeps_the_last_k(tmp_path):
    train(4, [ModelCheckpoint(tmp_path, keep=2, verbose=0)])
    assert epochs_saved(tmp_path) == [3, 4]


def test_resume_continues_exactly_where_the_checkpoint_left_off(tmp_path, capsys):
    straight, straight_history = train(5)
    train(3, [ModelCheckpoint(tmp_path)])
    resumed, history = train(5, [ModelCheckpoint(tmp_path)], resume=True)
    assert "resuming from" in capsys.readouterr().out
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True))
    assert history.epoch == [0, 1, 2, 3, 4]
    assert history.history == straight_history.history


def test_resume_without_a_checkpoint_starts_fresh_and_says_so_once(tmp_path, capsys):
    train(2, [ModelCheckpoint(tmp_path / "new")], resume=True)
    out = capsys.readouterr().out
    assert out.count("no checkpoint in") == 1 and "starting from scratch" in out
    assert epochs_saved(tmp_path / "new") == [1, 2]


def test_fresh_run_into_a_used_directory_is_refused_unless_overwrite(tmp_path):
    train(1, [ModelCheckpoint(tmp_path, verbose=0)])
    with pytest.raises(FileExistsError, match="already holds checkpoints .* pass resume=True"):
        train(1, [ModelCheckpoint(tmp_path, verbose=0)])
    train(2, [ModelCheckpoint(tmp_path, verbose=0, overwrite=True)])
    assert epochs_saved(tmp_path) == [1, 2]


def test_save_best_only_saves_improvements_of_the_monitored_value(tmp_path):
    _, history = train(6, [ModelCheckpoint(tmp_path, keep=10, save_best_only=True,
                                           monitor="val_accuracy", verbose=0)])
    accuracy = history.history["val_accuracy"]
    improved = [e + 1 for e, value in enumerate(accuracy) if value > max(accuracy[:e], default=-1)]
    assert epochs_saved(tmp_path) == improved
    template = fnlearn.init_state(model(), optim.keras_adam(0.01), (4,))
    _, _, metadata = restore_checkpoint(tmp_path, template)
    assert metadata == {"monitor": "val_accuracy", "best": max(accuracy)}


def run_early_stopping(values, **kwargs) -> tuple[EarlyStopping, int | None]:
    """Feeds ``values`` to an EarlyStopping; returns it and the epoch it stopped after."""
    callback = EarlyStopping(**kwargs)
    callback.on_train_begin(None, History(), False)
    for epoch, value in enumerate(values):
        if callback.on_epoch_end(epoch, None, {kwargs.get("monitor", "val_loss"): value}, None):
            return callback, epoch
    return callback, None


def test_early_stopping_follows_keras_patience_and_min_delta():
    assert run_early_stopping([1.0, 0.9, 0.95, 0.97], patience=2)[1] == 3
    assert run_early_stopping([1.0, 0.9, 0.95, 0.85, 0.99], patience=2)[1] is None
    assert run_early_stopping([1.0, 1.2], patience=0)[1] == 1
    # Improvements smaller than min_delta do not count.
    callback, stopped = run_early_stopping([1.0, 0.99, 0.98], patience=1, min_delta=0.05)
    assert stopped == 1 and callback.best == 1.0


def test_early_stopping_mode_auto_maximizes_accuracy():
    callback, stopped = run_early_stopping([0.5, 0.6, 0.55, 0.58], monitor="val_accuracy",
                                           patience=1)
    assert stopped == 2 and callback.best == 0.6 and callback.best_epoch == 1
    assert run_early_stopping([0.5, 0.6], monitor="val_accuracy", patience=0, mode="min")[1] == 1


def test_early_stopping_ends_fit_and_keeps_the_best_params():
    stopper = EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True)
    state, history = train(10, [stopper])
    # The loss falls every epoch, so "max" sees its best at epoch 0 and stops at epoch 2.
    assert history.epoch == [0, 1, 2] and stopper.stopped_epoch == 2
    first, _ = train(1)
    assert state.params is stopper.best_params and int(state.step) == 3 * 4
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(state.params), jax.tree.leaves(first.params), strict=True))


def test_early_stopping_replays_a_resumed_history(tmp_path):
    train(3, [ModelCheckpoint(tmp_path, verbose=0)])
    stopper = EarlyStopping(monitor="val_loss", patience=50)
    # The restored run is already at epoch 3: nothing is trained, and fit says so.
    with pytest.warns(UserWarning, match="already at epoch 3 .* pass epochs=6 to train 3 more"):
        _, history = train(3, [ModelCheckpoint(tmp_path, verbose=0), stopper], resume=True)
    assert history.epoch == [0, 1, 2]
    values = history.history["val_loss"]
    assert stopper.best == min(values) and stopper.best_epoch == values.index(min(values))


def test_monitoring_a_value_that_is_not_logged_is_an_error():
    with pytest.raises(ValueError, match=r"'val_loss' is not in the epoch's logs \['loss'\] \(pass "
                                       "validation_data"):
        fnlearn.fit(model(), X, Y, loss="sparse_categorical_crossentropy",
                    optimizer=optim.keras_adam(), epochs=2, verbose=0,
                    callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max', got 'minimum'"):
        EarlyStopping(mode="minimum")
    with pytest.raises(ValueError, match="patience must be a non-negative int"):
        EarlyStopping(patience=-1)


def test_keras_acc_monitors_watch_the_logged_accuracy(tmp_path):
    by_alias = EarlyStopping(monitor="val_acc", patience=1)
    by_name = EarlyStopping(monitor="val_accuracy", patience=1)
    _, history = train(6, [by_alias])
    train(6, [by_name])
    assert "val_acc" not in history.history
    assert (by_alias.best, by_alias.best_epoch, by_alias.stopped_epoch) == \
        (by_name.best, by_name.best_epoch, by_name.stopped_epoch)
    assert by_alias.best == max(history.history["val_accuracy"])
    # ModelCheckpoint(save_best_only) with Keras's "acc" maximizes the training accuracy.
    _, history = train(4, [ModelCheckpoint(tmp_path, keep=10, save_best_only=True, monitor="acc",
                                           verbose=0)])
    accuracy = history.history["accuracy"]
    assert epochs_saved(tmp_path) == [e + 1 for e, v in enumerate(accuracy)
                                      if v > max(accuracy[:e], default=-1)]


def test_a_misspelled_monitor_gets_the_closest_logged_name():
    with pytest.raises(ValueError, match=r"monitored value 'val_accurasy' is not in the epoch's "
                                         r"logs \['accuracy', 'loss', 'val_accuracy', 'val_loss'\] "
                                         r"\(did you mean 'val_accuracy'\?\)"):
        train(2, [EarlyStopping(monitor="val_accurasy")])


def test_epochs_are_counted_alike_by_history_callbacks_and_checkpoints(tmp_path):
    """History.epoch and best_epoch are 0-based; checkpoint N holds the state after N epochs."""
    # The loss falls every epoch, so "max" keeps epoch 0 as the best and stops after epoch 2.
    stopper = EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True)
    state, history = train(8, [ModelCheckpoint(tmp_path, keep=10, verbose=0), stopper])
    last = history.epoch[-1]
    assert (stopper.best_epoch, last) == (0, 2)
    assert history.epoch == list(range(last + 1)) and int(state.epoch) == last + 1
    assert epochs_saved(tmp_path) == [e + 1 for e in history.epoch]
    assert stopper.stopped_epoch == last
    template = fnlearn.init_state(model(), optim.keras_adam(0.01), (4,))
    best, best_history, _ = restore_checkpoint(tmp_path, template, epoch=stopper.best_epoch + 1)
    assert int(best.epoch) == stopper.best_epoch + 1
    assert best_history.epoch[-1] == stopper.best_epoch
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(best.params), jax.tree.leaves(stopper.best_params), strict=True))


class Recorder(fnlearn.Callback):
    """Records every hook call, and halves the learning rate before epoch 1."""

    batch_frequency = 2

    def __init__(self):
        self.calls = []

    def on_train_begin(self, state, history, resume):
        self.calls.append(("train_begin", self.params))

    def on_epoch_begin(self, epoch, state):
        self.calls.append(("epoch_begin", epoch))
        if epoch == 1:
            return state._replace(opt_state=optim.with_learning_rate(state.opt_state, 0.005))
        return None

    def on_train_batch_end(self, batch, state, logs, history):
        self.calls.append(("batch_end", batch, sorted(logs), int(state.step)))

    def on_epoch_end(self, epoch, state, logs, history):
        rate = float(optim.learning_rate(state.opt_state))
        self.calls.append(("epoch_end", epoch, round(rate, 6)))
        return False

    def on_train_end(self, state, history):
        self.calls.append(("train_end",))


def test_callbacks_get_every_hook_in_order_with_batch_hooks_every_n_batches():
    recorder = Recorder()
    train(2, [recorder])
    calls = recorder.calls
    assert calls[0][0] == "train_begin" and calls[-1] == ("train_end",)
    # 64 examples in batches of 16: 4 batches an epoch, a batch hook after 2 and 4.
    assert calls[1:-1] == [
        ("epoch_begin", 0), ("batch_end", 2, ["accuracy", "loss"], 2),
        ("batch_end", 4, ["accuracy", "loss"], 4), ("epoch_end", 0, 0.01),
        ("epoch_begin", 1), ("batch_end", 2, ["accuracy", "loss"], 6),
        ("batch_end", 4, ["accuracy", "loss"], 8), ("epoch_end", 1, 0.005)]
    assert recorder.params == {"epochs": 2, "steps": 4, "verbose": 0, "names": [
        "loss", "accuracy", "val_loss", "val_accuracy"]}


def test_an_object_that_is_not_a_callback_is_refused_naming_the_base_class():
    class Duck:
        def on_epoch_end(self, epoch, state, logs, history):
            return False

    with pytest.raises(TypeError, match=r"callbacks\[0\] is a Duck, not a fnlearn.Callback"):
        train(1, [Duck()])


def test_resume_asks_for_a_callback_that_restores_runs(tmp_path):
    from fnlearn.logging import CSVLogger

    with pytest.raises(ValueError, match="resume=True needs a callback that restores a run"):
        train(1, [CSVLogger(tmp_path / "log.csv")], resume=True)


def test_learning_rate_scheduler_sets_the_rate_each_epoch_without_recompiling():
    from fnlearn.callbacks import LearningRateScheduler

    rates = []

    class Watch(fnlearn.Callback):
        def on_epoch_end(self, epoch, state, logs, history):
            rates.append(float(optim.learning_rate(state.opt_state)))

    schedule = LearningRateScheduler(lambda epoch, lr: 0.01 * 0.5 ** epoch)
    net, optimizer = model(), optim.keras_adam(0.01)

    def run(epochs):
        fnlearn.fit(net, X, Y, loss="sparse_categorical_crossentropy", optimizer=optimizer,
                    epochs=epochs, batch_size=16, verbose=0, callbacks=[schedule, Watch()])

    run(1)
    with fnlearn.count_compilations() as compiled:
        run(4)
    assert rates[1:] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])
    assert compiled["jit(_train_epochs)"] == 0  # the rate is a value in the state


def test_reduce_lr_on_plateau_follows_keras():
    from fnlearn.callbacks import ReduceLROnPlateau

    callback = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_lr=0.003)
    state = fnlearn.init_state(model(), optim.keras_adam(0.01), (4,))
    callback.on_train_begin(state, History(), False)
    rates = []
    for epoch, value in enumerate([1.0, 0.9, 0.95, 0.97, 0.98, 0.99]):
        state = callback.on_epoch_begin(epoch, state) or state
        rates.append(float(optim.learning_rate(state.opt_state)))
        callback.on_epoch_end(epoch, state, {"val_loss": value}, None)
    # No improvement after epochs 2, 3, 4 (patience 1): 0.01 -> 0.005 -> 0.003 (min_lr).
    assert rates == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.003, 0.003])


def test_learning_rate_callbacks_name_the_fix_for_an_optimizer_without_a_kept_rate():
    from fnlearn.callbacks import LearningRateScheduler

    with pytest.raises(ValueError, match=r"optax.inject_hyperparams\(optax.adam\)"):
        fnlearn.fit(model(), X, Y, loss="sparse_categorical_crossentropy",
                    optimizer=optim.torch_adam(), epochs=1, verbose=0,
                    callbacks=[LearningRateScheduler(lambda epoch: 0.1)])

"""Bad inputs and faults: each fails early with an error that names the problem.

docs/errors.md lists these cases with their messages; each row names its test.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

import fnlearn
from fnlearn import nn, optim
from fnlearn.callbacks import ModelCheckpoint
from fnlearn.checkpoint import latest_checkpoint, restore_checkpoint

SCE = "sparse_categorical_crossentropy"
X = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
Y = np.arange(10, dtype=np.int32) % 2


def classifier() -> nn.Layer:
    return nn.serial(nn.Dense(4, "relu"), nn.Dense(2, "softmax"))


def fit(x=X, y=Y, **kwargs):
    options = dict(loss=SCE, optimizer=optim.keras_adam(), batch_size=5, verbose=0)
    return fnlearn.fit(classifier(), x, y, **{**options, **kwargs})


def with_nan(array, index):
    array = array.copy()
    array[index] = np.nan
    return array


@pytest.mark.parametrize("x, y, error, message", [
    (X.astype(object), Y, TypeError, "x must be a numeric array, got dtype object"),
    (np.array([["a", "b", "c"]] * 10), Y, TypeError, "x must be a numeric array, got dtype <U1"),
    (X, Y.astype(object), TypeError, "y must be a numeric array, got dtype object"),
    (np.float32(1.0), Y, ValueError, "x must have a leading example axis, got a scalar"),
    (with_nan(X, (3, 1)), Y, ValueError, r"x contains NaN or inf \(first at index \(3, 1\)\)"),
    (np.full_like(X, np.inf), Y, ValueError, r"x contains NaN or inf \(first at index \(0, 0\)\)"),
    (X[:0], Y[:0], ValueError, "x is empty: nothing to train or evaluate on"),
    (X, Y[:9], ValueError, "x has 10 examples but its labels have 9"),
    (X, Y + 1, ValueError, r"labels must be in \[0, 2\) for 2 classes; found 2 at index 1"),
    (X, -Y, ValueError, r"labels must be in \[0, 2\) for 2 classes; found -1 at index 1"),
    (X, Y.astype(np.float32), ValueError, "needs integer class labels, got dtype float32"),
    (X, np.stack([Y, Y], 1), ValueError, r"labels shape \(10, 2\) does not match predictions"),
])
def test_bad_training_data(x, y, error, message):
    with pytest.raises(error, match=message):
        fit(x, y)


@pytest.mark.parametrize("batch_size, message", [
    (0, "batch_size must be a positive int or None, got 0"),
    (-4, "batch_size must be a positive int or None, got -4"),
    (2.5, "batch_size must be a positive int or None, got 2.5"),
    (11, "batch_size 11 is larger than the 10 training examples"),
])
def test_bad_batch_size(batch_size, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fit(batch_size=batch_size)


def test_bad_epochs_and_validation_data():
    with pytest.raises(ValueError, match="epochs must be a non-negative int, got -1"):
        fit(epochs=-1)
    with pytest.raises(ValueError, match="validation x has 4 examples but its labels have 3"):
        fit(validation_data=(X[:4], Y[:3]))
    with pytest.raises(ValueError, match=r"per-example shape \(5,\)"):
        fit(validation_data=(np.zeros((4, 5), np.float32), Y[:4]))
    with pytest.raises(ValueError, match="validation_data must be a pair"):
        fit(validation_data=(X,))


def test_inputs_of_the_wrong_shape_for_trained_params():
    params = nn.init(classifier(), 0, (3,))
    with pytest.raises(ValueError, match=r"model cannot be applied to inputs of per-example shape "
                                         r"\(5,\) \(dtype float32\): dot_general"):
        fnlearn.predict(classifier(), params, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"model cannot be applied to inputs of per-example "
                                         r"shape \(5,\)"):
        fit(np.zeros((10, 5), np.float32), initial_params=params)
    with pytest.raises(ValueError, match=r"per-example shape \(\)"):
        fnlearn.predict(classifier(), params, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="x is empty: nothing to predict"):
        fnlearn.predict(classifier(), params, np.zeros((0, 3), np.float32))


def test_loss_that_cannot_compare_labels_and_outputs():
    with pytest.raises(ValueError, match=r"loss cannot compare labels of per-example shape \(3,\) "
                                         r"with model outputs of per-example shape \(2,\)"):
        fnlearn.fit(nn.serial(nn.Dense(2)), X, X, loss="mse", optimizer=optim.keras_adam(),
                    batch_size=5, verbose=0)
    with pytest.raises(ValueError, match="unknown loss 'squared_hinge'"):
        fit(loss="squared_hinge")


def diverging_run(directory):
    """Linear regression with a step size too large: the loss overflows after a few epochs."""
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32) * 3
    return fnlearn.fit(nn.serial(nn.Dense(1)), x, x.sum(1, keepdims=True), loss="mse",
                       optimizer=optim.keras_sgd(1.0), epochs=20, batch_size=16, verbose=0,
                       callbacks=[ModelCheckpoint(directory, keep=2, verbose=0)])


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(fnlearn.NonFiniteLossError,
                       match=r"loss became NaN or inf at epoch (\d+), step (\d+) of 4") as error:
        diverging_run(tmp_path)
    bad_epoch = int(re.search(r"epoch (\d+)", str(error.value)).group(1))
    assert bad_epoch > 1
    latest = latest_checkpoint(tmp_path)
    assert int(latest.name) == bad_epoch - 1
    template = fnlearn.init_state(nn.serial(nn.Dense(1)), optim.keras_sgd(1.0), (4,))
    state, history, _ = restore_checkpoint(tmp_path, template)
    assert int(state.epoch) == bad_epoch - 1
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))
    assert len(history.history["loss"]) == bad_epoch - 1


def test_bool_batch_size_is_refused():
    with pytest.raises(ValueError, match="batch_size must be a positive int or None, got True"):
        fit(batch_size=True)


def test_inputs_without_a_feature_axis_name_the_shape():
    with pytest.raises(ValueError, match=r"cannot be initialized for inputs of per-example "
                                         r"shape \(\)"):
        fit(np.zeros(10, np.float32))


def test_ragged_inputs_name_the_argument():
    with pytest.raises(ValueError, match="x cannot be converted to an array"):
        fit([[1.0, 2.0, 3.0], [1.0]] * 5)


def test_complex_inputs_are_refused():
    with pytest.raises(TypeError, match="x must be real numbers, got dtype complex64"):
        fit(X.astype(np.complex64))


def test_every_row_of_errors_md_names_a_test_that_exists():
    import re
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    text = (tests.parent / "docs" / "errors.md").read_text()
    named = re.findall(r"`((?:parity/)?test_\w+\.py)::(\w+)`", text)
    assert len(named) > 80
    missing = [f"{file}::{name}" for file, name in named
               if f"def {name}(" not in (tests / file).read_text()]
    assert missing == []

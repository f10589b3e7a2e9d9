"""CSVLogger (Keras's CSV format) and TensorBoard (event files read back with an event reader)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import fnlearn
from fnlearn import nn, optim
from fnlearn.callbacks import ModelCheckpoint
from fnlearn.logging import CSVLogger, TensorBoard

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int32)


def train(epochs: int, callbacks=(), resume: bool = False, validation: bool = True):
    model = nn.serial(nn.Dense(8, "relu"), nn.Dense(2, "softmax"))
    return fnlearn.fit(model, X[:64], Y[:64], loss="sparse_categorical_crossentropy",
                       optimizer=optim.keras_adam(0.01), metrics=["accuracy"], epochs=epochs,
                       batch_size=16, validation_data=(X[64:], Y[64:]) if validation else None,
                       seed=3, verbose=0, callbacks=callbacks, resume=resume)


def read_csv(path) -> list[list[str]]:
    with open(path, newline="") as file:
        return list(csv.reader(file))


def test_csv_logger_writes_keras_format(tmp_path):
    path = tmp_path / "logs" / "run.csv"
    _, history = train(3, [CSVLogger(path)])
    rows = read_csv(path)
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2"]
    for column, name in enumerate(rows[0][1:], start=1):
        assert [float(row[column]) for row in rows[1:]] == history.history[name]


def test_csv_logger_append_and_separator(tmp_path):
    path = tmp_path / "run.tsv"
    train(2, [CSVLogger(path, separator="\t")])
    train(1, [CSVLogger(path, separator="\t", append=True)])
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[0].split("\t")[0] == "epoch"
    assert [line.split("\t")[0] for line in lines[1:]] == ["0", "1", "0"]
    train(1, [CSVLogger(path, separator="\t")])  # without append: a fresh file
    assert len(path.read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="separator must be one character"):
        CSVLogger(path, separator="::")


def test_csv_logger_writes_na_for_a_missing_value(tmp_path):
    logger = CSVLogger(tmp_path / "na.csv")
    logger.on_epoch_end(0, None, {"loss": 0.5, "val_loss": 0.7}, None)
    logger.on_epoch_end(1, None, {"loss": 0.4}, None)
    assert read_csv(tmp_path / "na.csv") == [["epoch", "loss", "val_loss"],
                                             ["0", "0.5", "0.7"], ["1", "0.4", "NA"]]


def test_csv_logger_on_resume_matches_the_restored_history(tmp_path):
    _, straight = train(4)

    def callbacks():
        return [ModelCheckpoint(tmp_path / "ckpt", verbose=0), CSVLogger(tmp_path / "run.csv")]

    train(2, callbacks())
    train(4, callbacks(), resume=True)
    rows = read_csv(tmp_path / "run.csv")
    assert [row[0] for row in rows[1:]] == ["0", "1", "2", "3"]
    assert [float(row[2]) for row in rows[1:]] == straight.history["loss"]


@pytest.fixture
def event_scalars(need):
    """``event_scalars(folder)``: scalars from its event files, read by TensorFlow's reader."""
    tf = need("tensorflow")
    return lambda folder: read_scalars(tf, folder)


def read_scalars(tf, folder) -> dict[str, list[tuple[int, float]]]:
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_event_files_hold_the_epoch_scalars(tmp_path, event_scalars):
    _, history = train(3, [TensorBoard(tmp_path)])
    train_scalars = event_scalars(tmp_path / "train")
    validation_scalars = event_scalars(tmp_path / "validation")
    assert sorted(train_scalars) == ["epoch_accuracy", "epoch_loss"]
    assert sorted(validation_scalars) == ["epoch_accuracy", "epoch_loss"]
    steps, losses = zip(*train_scalars["epoch_loss"], strict=True)
    assert steps == (0, 1, 2)
    np.testing.assert_allclose(losses, history.history["loss"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in validation_scalars["epoch_accuracy"]],
                               history.history["val_accuracy"], rtol=1e-6)


def test_tensorboard_without_validation_writes_only_the_train_run(tmp_path):
    train(2, [TensorBoard(tmp_path)], validation=False)
    assert [p.name for p in tmp_path.iterdir()] == ["train"]
    event_files = list((tmp_path / "train").glob("events.out.tfevents.*"))
    assert len(event_files) == 1 and event_files[0].stat().st_size > 0


def test_csv_logger_writes_a_row_every_n_batches_on_both_drivers(tmp_path):
    # 64 examples in batches of 16: 4 batches an epoch; a row after batches 2 and 4.
    memory_path, stream_path = tmp_path / "memory.csv", tmp_path / "stream.csv"
    _, memory_history = train(2, [CSVLogger(memory_path, update_freq=2)])
    model = nn.serial(nn.Dense(8, "relu"), nn.Dense(2, "softmax"))
    _, stream_history = fnlearn.fit(
        model, fnlearn.sources.ArraySource(X[:64], Y[:64]), None,
        loss="sparse_categorical_crossentropy", optimizer=optim.keras_adam(0.01),
        metrics=["accuracy"], epochs=2, batch_size=16, validation_data=(X[64:], Y[64:]),
        seed=3, verbose=0, callbacks=[CSVLogger(stream_path, update_freq=2)])
    for path, history in ((memory_path, memory_history), (stream_path, stream_history)):
        rows = read_csv(path)
        assert rows[0] == ["epoch", "batch", "loss", "accuracy", "val_loss", "val_accuracy"]
        assert [row[:2] for row in rows[1:]] == [["0", "2"], ["0", "4"], ["1", "2"], ["1", "4"]]
        # Batch rows carry the running training values; validation comes at the epoch's end.
        assert rows[1][4:] == ["NA", "NA"]
        epoch_ends = [rows[2], rows[4]]
        assert [float(row[2]) for row in epoch_ends] == history.history["loss"]
        assert [float(row[4]) for row in epoch_ends] == history.history["val_loss"]
    assert read_csv(memory_path) == read_csv(stream_path)  # one epoch loop, the same numbers


def test_update_freq_is_checked():
    with pytest.raises(ValueError, match="update_freq must be 'epoch' or a positive int"):
        CSVLogger("x.csv", update_freq="batch")
    with pytest.raises(ValueError, match="update_freq must be 'epoch' or a positive int"):
        TensorBoard("logs", update_freq=0)


def test_tensorboard_update_freq_writes_batch_scalars_at_the_optimizer_step(tmp_path,
                                                                           event_scalars):
    _, history = train(2, [TensorBoard(tmp_path, update_freq=2)], validation=False)
    scalars = event_scalars(tmp_path / "train")
    assert [step for step, _ in scalars["batch_loss"]] == [2, 4, 6, 8]
    assert [step for step, _ in scalars["epoch_loss"]] == [0, 1]
    # The batch-4 value of an epoch is its running mean over all 4 batches: the epoch's loss.
    assert [value for step, value in scalars["batch_loss"] if step % 4 == 0] == pytest.approx(
        history.history["loss"], rel=1e-6)

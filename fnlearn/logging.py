"""Training logs in the formats people already read: TensorBoard event files and Keras's CSV.

    fit(..., callbacks=[TensorBoard("logs/run1"), CSVLogger("logs/run1.csv")])

Both are ``fnlearn.Callback`` objects that write the epoch's logs dict, ``{"loss": ...,
"accuracy": ..., "val_loss": ..., ...}``, after every epoch, and with ``update_freq=N``
also the epoch's running values every N batches (Keras's ``update_freq``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from fnlearn.loop.hooks import Callback


def _update_freq(update_freq) -> int | None:
    """``"epoch"`` (None) or a positive number of batches."""
    if update_freq == "epoch":
        return None
    if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
        raise ValueError(f"update_freq must be 'epoch' or a positive int (batches), got "
                         f"{update_freq!r}")
    return update_freq


class CSVLogger(Callback):
    """Writes one CSV row per epoch, as Keras's ``CSVLogger`` does.

    The header is ``epoch`` then the first epoch's log names in sorted order; ``epoch`` counts
    from 0; a name missing from a later epoch is written ``NA``. Each row is written and the file
    closed at the end of its epoch, so the file is complete after an interruption.
    On ``fit(resume=True)`` the file is rewritten from the restored history, so it always matches
    the run that continues.

    With ``update_freq=N`` the header is ``epoch,batch`` then every name the epoch logs
    (``fit`` says which, ``Callback.params["names"]``), and a row is written every N
    batches with the epoch's running values so far (validation values ``NA``), plus one
    at each epoch's end with ``batch`` the epoch's batch count.

    Args:
      filename: the CSV file; its folder is created if needed.
      separator: the field separator.
      append: keep the rows already in the file (no second header) instead of starting afresh.
      update_freq: ``"epoch"``, or a row every this many batches too.
    """

    def __init__(self, filename: str | os.PathLike, separator: str = ",", append: bool = False,
                 update_freq: str | int = "epoch"):
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be one character, got {separator!r}")
        self.filename = Path(filename)
        self.separator = separator
        self.append = append
        self.batch_frequency = _update_freq(update_freq)
        self.keys: list[str] | None = None

    def on_train_begin(self, state: Any, history: Any, resume: bool) -> None:
        self.filename.parent.mkdir(parents=True, exist_ok=True)
        self.keys = None
        if self.append and not resume:
            self.keys = self._existing_keys()
            return
        self.filename.write_text("")
        if resume:
            for i, epoch in enumerate(history.epoch):
                self._write(epoch, {name: values[i] for name, values in history.history.items()})

    def on_train_batch_end(self, batch: int, state: Any, logs: dict[str, float],
                           history: Any) -> None:
        if batch < self.params.get("steps", batch + 1):  # the epoch's end row follows
            self._write(int(state.epoch), logs, batch)

    def on_epoch_end(self, epoch: int, state: Any, logs: dict[str, float], history: Any) -> bool:
        self._write(epoch, logs, self.params.get("steps") if self.batch_frequency else None)
        return False

    def _existing_keys(self) -> list[str] | None:
        if not self.filename.is_file() or self.filename.stat().st_size == 0:
            return None
        with self.filename.open(newline="") as file:
            header = next(csv.reader(file, delimiter=self.separator), [])
        lead = 2 if self.batch_frequency else 1
        expected = ["epoch", "batch"][:lead]
        return header[lead:] if header[:lead] == expected else None

    def _write(self, epoch: int, logs: dict[str, float], batch: int | None = None) -> None:
        new_file = self.keys is None
        if new_file:
            names = self.params.get("names") if self.batch_frequency else None
            self.keys = list(names) if names else sorted(logs)
        lead = ["epoch", "batch"] if self.batch_frequency else ["epoch"]
        with self.filename.open("a", newline="") as file:
            writer = csv.writer(file, delimiter=self.separator)
            if new_file:
                writer.writerow([*lead, *self.keys])
            where = [epoch, batch] if self.batch_frequency else [epoch]
            writer.writerow([*where, *(logs.get(key, "NA") for key in self.keys)])


class TensorBoard(Callback):
    """Writes each epoch's logs as TensorBoard scalars, laid out as Keras's ``TensorBoard`` does.

    Training values go to ``log_dir/train`` and validation values (``val_`` dropped) to
    ``log_dir/validation``, both tagged ``epoch_<name>`` at step ``epoch`` (from 0), so
    TensorBoard draws the two runs on one chart per value. With ``update_freq=N`` the
    epoch's running training values are also written every N batches, tagged
    ``batch_<name>`` at step ``state.step`` (optimizer steps so far), as Keras does.
    View with ``tensorboard --logdir LOG_DIR``. Uses tensorboardX, which needs no TensorFlow.

    Args:
      log_dir: the folder for the event files; created if needed.
      update_freq: ``"epoch"``, or batch scalars every this many batches too.
    """

    def __init__(self, log_dir: str | os.PathLike = "logs", update_freq: str | int = "epoch"):
        self.log_dir = Path(log_dir)
        self.batch_frequency = _update_freq(update_freq)
        self._writers: dict[str, Any] = {}

    def on_train_begin(self, state: Any, history: Any, resume: bool) -> None:
        # A resumed run's earlier epochs are in the event files its first run wrote.
        self._close()
        _summary_writer_class()  # a missing tensorboardX fails here, before any training

    def _writer(self, run: str):
        if run not in self._writers:  # no validation folder for a run without validation
            self._writers[run] = _summary_writer_class()(str(self.log_dir / run))
        return self._writers[run]

    def on_train_batch_end(self, batch: int, state: Any, logs: dict[str, float],
                           history: Any) -> None:
        writer = self._writer("train")
        for name, value in logs.items():
            writer.add_scalar(f"batch_{name}", float(value), int(state.step))
        writer.flush()

    def on_epoch_end(self, epoch: int, state: Any, logs: dict[str, float], history: Any) -> bool:
        for name, value in logs.items():
            run, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            self._writer(run).add_scalar(f"epoch_{tag}", float(value), epoch)
        for writer in self._writers.values():
            writer.flush()
        return False

    def on_train_end(self, state: Any, history: Any) -> None:
        self._close()

    def _close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _summary_writer_class() -> type:
    try:
        from tensorboardX import SummaryWriter
    except ImportError as error:
        raise ImportError("TensorBoard logging needs tensorboardX: pip install tensorboardX"
                          ) from error
    return SummaryWriter

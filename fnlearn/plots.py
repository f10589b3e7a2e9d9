"""Pictures of a training run: learning curves, a confusion matrix, misclassified examples.

Each function writes its picture to a file and returns a ``Plot``: the path and
the matplotlib ``Figure``, made outside pyplot with its own Agg canvas (so nothing
accumulates in pyplot and matplotlib's global backend is left alone): show it in a
notebook, save it again, or read its artists. matplotlib is imported inside each
function, so ``import fnlearn`` does not pay for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


class Plot(NamedTuple):
    """A picture written to ``path``; ``figure`` is its matplotlib ``Figure``."""

    path: Path
    figure: Any


def _names(class_names: Sequence[str] | None, count: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(count)]
    if len(class_names) < count:
        raise ValueError(f"class_names has {len(class_names)} names for {count} classes")
    return [str(name) for name in class_names]


def figure(**kwargs):
    """A matplotlib ``Figure`` drawn by the Agg canvas, outside pyplot: no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]`` over all examples, shape ``(num_classes, num_classes)``."""
    labels, predicted = np.asarray(labels).reshape(-1), np.asarray(predicted).reshape(-1)
    if labels.shape != predicted.shape:
        raise ValueError(
            f"labels {labels.shape} and predictions {predicted.shape} differ in length")
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def plot_history(history, path: str | os.PathLike) -> Plot:
    """Loss and each metric per epoch, train and validation, one panel each.

    The x axis counts epochs from 1, as the progress bar does (``Epoch 1/5``).
    """
    values = history.history
    names = [n for n in values if not n.startswith("val_")]
    epochs = np.arange(1, len(values[names[0]]) + 1)
    fig = figure(figsize=(5 * len(names), 4))
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(epochs, values[name], "o-", label=f"train {name}")
        if f"val_{name}" in values:
            ax.plot(epochs, values[f"val_{name}"], "s--", label=f"validation {name}")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.set_xticks(epochs)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return Plot(Path(path), fig)


def plot_confusion_matrix(matrix: np.ndarray, path: str | os.PathLike, *,
                          class_names: Sequence[str] | None = None) -> Plot:
    """The confusion matrix as a heat map with the counts written in each cell.

    Args:
      matrix: counts ``[true, predicted]`` (``confusion_matrix``).
      path: the image file to write.
      class_names: tick labels, one per class; the class ids if None.
    """
    classes = matrix.shape[0]
    names = _names(class_names, classes)
    fig = figure(figsize=(7, 6))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(classes), names[:classes], rotation=45 if class_names else 0)
    ax.set_yticks(range(classes), names[:classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > threshold else "black")
    ax.set_title(f"Confusion matrix ({matrix.trace()} of {matrix.sum()} correct)")
    fig.tight_layout()
    fig.savefig(path)
    return Plot(Path(path), fig)


def plot_misclassified(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                       path: str | os.PathLike, max_images: int = 36, *,
                       class_names: Sequence[str] | None = None) -> Plot:
    """A grid of the first misclassified images titled ``true -> predicted``.

    Args:
      images, labels, predicted: the examples, their classes and the predicted ones.
      path: the image file to write.
      max_images: at most this many images.
      class_names: names to title the images with; the class ids if None.
    """
    names = None if class_names is None else _names(
        class_names, int(max(np.max(labels), np.max(predicted))) + 1)
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(predicted))[:max_images]
    columns = 6
    rows = max(1, -(-len(wrong) // columns))
    fig = figure(figsize=(columns * 1.6, rows * 1.8))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong):
        ax.imshow(images[index], cmap="gray_r")
        true, guess = labels[index], predicted[index]
        if names is not None:
            true, guess = names[int(true)], names[int(guess)]
        ax.set_title(f"{true} -> {guess}", fontsize=9, color="firebrick")
    fig.suptitle(f"Misclassified examples (true -> predicted), first {len(wrong)}")
    fig.tight_layout()
    fig.savefig(path)
    return Plot(Path(path), fig)

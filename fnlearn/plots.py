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


def image_grid(images: np.ndarray, nrow: int = 8, padding: int = 2,
               pad_value: float = 0.0) -> np.ndarray:
    """Tiles images into one, ``nrow`` to a row (torchvision's ``make_grid``, grayscale).

    Args:
      images: ``(N, H, W)`` or ``(N, H, W, 1)`` values (any range; kept as given).
      nrow: images per row.
      padding: pixels between images and around the grid.
      pad_value: the value of the padding.

    Returns:
      The grid, shape ``(rows * (H + padding) + padding, nrow * (W + padding) + padding)``
      with ``rows = ceil(N / nrow)``; row-major order, unfilled cells left at ``pad_value``.
    """
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, 1) with N >= 1, got shape "
                         f"{images.shape}")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    count, height, width = images.shape
    columns = min(nrow, count)
    rows = -(-count // columns)
    grid = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding),
                   pad_value, dtype=np.result_type(images.dtype, np.float32))
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top:top + height, left:left + width] = image
    return grid


def save_image_grid(images: np.ndarray, path: str | os.PathLike, nrow: int = 8,
                    padding: int = 2, value_range: tuple[float, float] = (0.0, 1.0)) -> Path:
    """Writes ``image_grid(images)`` as an 8-bit grayscale PNG (torchvision's ``save_image``).

    Args:
      images: ``(N, H, W)`` or ``(N, H, W, 1)``.
      path: the PNG to write.
      nrow, padding: as ``image_grid``'s (black padding).
      value_range: the values shown black and white (``(-1, 1)`` for a tanh generator);
        values outside are clipped.
    """
    from PIL import Image

    low, high = value_range
    grid = image_grid((np.asarray(images, np.float32) - low) / (high - low), nrow, padding)
    pixels = np.round(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return Path(path)


def save_gif(frames: Sequence[str | os.PathLike | np.ndarray], path: str | os.PathLike, *,
             seconds_per_frame: float = 0.5) -> Path:
    """An animated GIF of ``frames`` (PNG paths or 8-bit arrays), looping, the last one held.

    Args:
      frames: the pictures in order, all the same size.
      path: the GIF to write.
      seconds_per_frame: how long each frame shows (the last shows three times longer).
    """
    from PIL import Image

    if not frames:
        raise ValueError("save_gif needs at least one frame")
    pictures = []
    for frame in frames:
        if isinstance(frame, np.ndarray):
            pictures.append(Image.fromarray(frame))
        else:
            with Image.open(frame) as picture:
                pictures.append(picture.convert("L"))
    sizes = {p.size for p in pictures}
    if len(sizes) != 1:
        raise ValueError(f"frames differ in size: {sorted(sizes)}")
    duration = [int(seconds_per_frame * 1000)] * len(pictures)
    duration[-1] *= 3
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=duration,
                     loop=0)
    return Path(path)

"""Plots: the figures show the numbers they are given (read back from their artists)."""

from __future__ import annotations

import numpy as np
import pytest

from fnlearn import plots
from fnlearn.state import History

NAMES = ["zero", "one", "two"]


def test_history_curves_carry_the_history_values(tmp_path):
    history = History({"loss": [0.9, 0.5, 0.4], "accuracy": [0.6, 0.8, 0.85],
                       "val_loss": [1.0, 0.7, 0.6], "val_accuracy": [0.5, 0.7, 0.75]},
                      [0, 1, 2], [1.0, 0.1, 0.1])
    plot = plots.plot_history(history, tmp_path / "curves.png")
    assert plot.path == tmp_path / "curves.png" and plot.path.stat().st_size > 0
    panels = {ax.get_title(): ax for ax in plot.figure.axes}
    assert sorted(panels) == ["accuracy", "loss"]
    for name, ax in panels.items():
        train, validation = ax.lines
        np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3])
        np.testing.assert_array_equal(train.get_ydata(), history.history[name])
        np.testing.assert_array_equal(validation.get_ydata(), history.history[f"val_{name}"])


def test_confusion_matrix_counts_are_the_figure_s_numbers(tmp_path):
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2, 2, 0, 2])
    matrix = plots.confusion_matrix(labels, predicted, 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 2, 1], [1, 0, 3]])
    path, figure = plots.plot_confusion_matrix(matrix, tmp_path / "cm.png", class_names=NAMES)
    ax = figure.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), matrix)
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text())
             for t in ax.texts}
    assert cells == {(i, j): int(matrix[i, j]) for i in range(3) for j in range(3)}
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert ax.get_title() == "Confusion matrix (6 of 9 correct)"
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="class_names has 2 names for 3 classes"):
        plots.plot_confusion_matrix(matrix, tmp_path / "cm2.png", class_names=NAMES[:2])


def test_misclassified_grid_shows_the_wrong_ones_with_class_names(tmp_path):
    images = np.arange(9 * 4, dtype=np.uint8).reshape(9, 2, 2)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2, 2, 0, 2])
    plot = plots.plot_misclassified(images, labels, predicted, tmp_path / "wrong.png",
                                    class_names=NAMES)
    shown = [ax for ax in plot.figure.axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["zero -> one", "one -> two", "two -> zero"]
    for ax, index in zip(shown, [1, 4, 7], strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), images[index])
    by_id = plots.plot_misclassified(images, labels, predicted, tmp_path / "ids.png")
    assert [ax.get_title() for ax in by_id.figure.axes if ax.images] == ["0 -> 1", "1 -> 2",
                                                                          "2 -> 0"]


def test_image_grid_tiles_images_row_major_with_padding():
    images = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 3, 4, 1))
    grid = plots.image_grid(images, nrow=2, padding=1, pad_value=-1.0)
    # 3 rows of 2: height 3 * (3 + 1) + 1, width 2 * (4 + 1) + 1.
    assert grid.shape == (13, 11)
    assert grid[1:4, 1:5].tolist() == [[0.0] * 4] * 3
    assert grid[1:4, 6:10].tolist() == [[1.0] * 4] * 3
    assert grid[9:12, 1:5].tolist() == [[4.0] * 4] * 3
    assert grid[9:12, 6:10].tolist() == [[-1.0] * 4] * 3  # no sixth image
    assert grid[0].tolist() == [-1.0] * 11


def test_save_image_grid_writes_the_values_as_8_bit_gray(tmp_path):
    from PIL import Image

    images = np.stack([np.full((28, 28), -1.0), np.full((28, 28), 1.0)])
    path = plots.save_image_grid(images, tmp_path / "grid.png", nrow=8,
                                 value_range=(-1.0, 1.0))
    with Image.open(path) as picture:
        pixels = np.asarray(picture)
    assert picture.mode == "L" and pixels.shape == (32, 62)
    assert pixels[2:30, 2:30].max() == 0 and pixels[2:30, 32:60].min() == 255


def test_save_gif_keeps_every_frame_and_refuses_mixed_sizes(tmp_path):
    from PIL import Image

    frames = [np.full((10, 10), value, np.uint8) for value in (0, 128, 255)]
    path = plots.save_gif(frames, tmp_path / "run.gif", seconds_per_frame=0.1)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.size == (10, 10)
    with pytest.raises(ValueError, match="frames differ in size"):
        plots.save_gif([frames[0], np.zeros((5, 5), np.uint8)], tmp_path / "bad.gif")
    with pytest.raises(ValueError, match="images must be"):
        plots.image_grid(np.zeros((2, 3)))

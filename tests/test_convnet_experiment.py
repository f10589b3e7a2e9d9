"""The convnet experiment, both recipes, one short epoch each (the full runs: docs/convnets.md).

Each trains one epoch on the first 6,000 training images (of the full MNIST when
FNLEARN_DATA_DIR points at it, as in CI, else of the shipped sample) and is tested
on the whole test set. Measured on the full data with seed 0: Keras 86.23% (43 steps
of 128, 10% held out), PyTorch 94.91% (94 steps of 64); the bounds leave room for
other platforms' rounding.
"""

import pytest

from experiments import convnet


def test_keras_recipe_one_short_epoch_and_its_pictures(tmp_path, capsys):
    result = convnet.main(["--recipe", "keras", "--epochs", "1", "--train-size", "6000",
                           "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Total params: 34,826" in out
    # validation_split=0.1 leaves 5,400 images: 43 steps of 128.
    assert "Epoch 1/1" in out and "43/43 - " in out and "val_accuracy: " in out
    assert f"Test accuracy: {result['test_accuracy'] * 100:.2f}%" in out
    assert result["test_accuracy"] > 0.80
    for name in ("training_curves.png", "confusion_matrix.png", "misclassified.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torch_recipe_one_short_epoch(capsys):
    result = convnet.main(["--recipe", "torch", "--epochs", "1", "--train-size", "6000",
                           "--no-plots"])
    out = capsys.readouterr().out
    assert "Total params: 1,199,882" in out
    assert "94/94 - " in out and "learning_rate: 1.0000" in out
    assert result["history"].history["learning_rate"] == [1.0]
    assert result["test_accuracy"] > 0.90


def test_bad_sizes_are_refused():
    with pytest.raises(SystemExit):
        convnet.main(["--recipe", "keras", "--train-size", "0"])

"""The sequence recipes, one short epoch each (the full runs: docs/sequences.md).

Each trains one epoch on the first 2,048 training images (of the full MNIST when
FNLEARN_DATA_DIR points at it, as in CI, else of the shipped sample) and is tested on
the whole test set; the bounds say the model learned, not how well the recipe does.
"""

import pytest

from experiments import rnn, vit


def test_rnn_recipe_one_short_epoch(capsys):
    result = rnn.main(["--epochs", "1", "--train-size", "2048", "--no-plots"])
    out = capsys.readouterr().out
    assert "Total params: 26,602" in out and "lstm_0 (LSTM)" in out
    assert "32/32 - " in out and "learning_rate: 0.1000" in out
    assert result["test_accuracy"] > 0.2  # 10 classes: chance is 0.1


def test_vit_recipe_one_short_epoch(tmp_path, capsys):
    result = vit.main(["--epochs", "1", "--train-size", "2048", "--depth", "1",
                       "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "class_token_0 (ClassToken)" in out and "(None, 17, 64)" in out
    assert "16/16 - " in out
    assert result["test_accuracy"] > 0.3
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_sizes_are_refused():
    with pytest.raises(SystemExit):
        rnn.main(["--unroll", "0"])
    with pytest.raises(SystemExit):
        vit.main(["--depth", "0"])

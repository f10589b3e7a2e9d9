"""The regression experiment against the reference program's recorded output."""

import numpy as np
import pytest

from experiments import regression

# torch_linear_regression.py as run with torch 2.13.0 (shared reference README).
REFERENCE_LINES = """\
Epoch [100/1000], Loss: 0.2024
Epoch [200/1000], Loss: 0.1098
Epoch [300/1000], Loss: 0.0627
Epoch [400/1000], Loss: 0.0371
Epoch [500/1000], Loss: 0.0232
Epoch [600/1000], Loss: 0.0156
Epoch [700/1000], Loss: 0.0115
Epoch [800/1000], Loss: 0.0093
Epoch [900/1000], Loss: 0.0081
Epoch [1000/1000], Loss: 0.0074"""
REFERENCE_INITIAL = (0.14465749, -0.25897074)
REFERENCE_FINAL = (3.02227354, 3.96786785)


def test_fixture_holds_the_articles_torch_draws():
    x, y, params = regression.article_data()
    assert x.shape == y.shape == (100, 1) and x.dtype == np.float32
    assert float(params["dense_0"]["kernel"][0, 0]) == pytest.approx(REFERENCE_INITIAL[0], abs=1e-8)
    assert float(params["dense_0"]["bias"][0]) == pytest.approx(REFERENCE_INITIAL[1], abs=1e-8)


def test_prints_the_reference_lines_exactly_and_ends_at_the_reference_parameters(
        tmp_path, capsys):
    result = regression.main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.startswith(REFERENCE_LINES + "\n")
    assert "Final parameters: weight 3.0223, bias 3.9679" in out
    assert result["weight"] == pytest.approx(REFERENCE_FINAL[0], abs=1e-5)
    assert result["bias"] == pytest.approx(REFERENCE_FINAL[1], abs=1e-5)
    png = (tmp_path / "regression.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "regression.png")
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_fresh_seed_converges_to_the_generating_line(tmp_path):
    result = regression.main(["--seed", "7", "--out", str(tmp_path)])
    assert result["weight"] == pytest.approx(3.0, abs=0.1)
    assert result["bias"] == pytest.approx(4.0, abs=0.1)
    assert result["losses"][-1] < 0.02

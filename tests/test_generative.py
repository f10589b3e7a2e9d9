"""The generative programs, a short run each on the shipped sample (full runs: docs/generative.md).

Each asserts what the program is for: the losses fall and stay finite, the reference's
lines are printed as the reference prints them, and the pictures come out with the
reference's layout.
"""

import re

import numpy as np
from PIL import Image

from experiments import vae


def picture_size(path):
    with Image.open(path) as picture:
        return picture.size


def test_vae_two_epochs_print_the_reference_lines_and_pictures(tmp_path, capsys):
    result = vae.main(["--source", "sample", "--epochs", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    train = [float(v) for v in re.findall(r"^====> Epoch: \d+ Average loss: (\d+\.\d{4})$",
                                          out, re.MULTILINE)]
    test = [float(v) for v in re.findall(r"^====> Test set loss: (\d+\.\d{4})$", out,
                                         re.MULTILINE)]
    assert len(train) == len(test) == 2
    assert train == [round(v, 4) for v in result["history"].history["loss"]]
    # Measured on the sample with seed 1: train 273.4, 202.9; test 208.3, 186.7 per image
    # (an untrained decoder scores about 550).
    assert train[1] < train[0] < 300 and test[1] < test[0] < 230 and test[1] < 200
    # 8 test digits over their reconstructions, and 64 samples: 8 to a row, 2 px padding.
    assert picture_size(tmp_path / "reconstruction_2.png") == (242, 62)
    assert picture_size(tmp_path / "sample_2.png") == (242, 242)
    with Image.open(tmp_path / "sample_2.png") as picture:
        assert np.asarray(picture).std() > 20  # digits on black, not a blank or grey square

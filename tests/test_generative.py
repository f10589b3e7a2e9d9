"""The generative programs, a short run each on the shipped sample (full runs: docs/generative.md).

Each asserts what the program is for: the losses fall and stay finite, the reference's
lines are printed as the reference prints them, and the pictures come out with the
reference's layout.
"""

import re

import jax
import numpy as np
from PIL import Image

from experiments import conv_vae, dcgan, vae


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


def test_conv_vae_two_short_epochs_and_the_example_s_pictures(tmp_path):
    result = conv_vae.main(["--source", "sample", "--epochs", "2", "--train-size", "1024",
                            "--out", str(tmp_path), "--verbose", "0"])
    logs = result["history"].history
    assert sorted(logs) == ["kl_loss", "loss", "reconstruction_loss"]
    assert all(np.isfinite(v).all() for v in logs.values())
    assert logs["loss"][1] < logs["loss"][0]
    np.testing.assert_allclose(np.add(logs["reconstruction_loss"], logs["kl_loss"]),
                               logs["loss"], rtol=1e-5)
    # The example's figure sizes at matplotlib's 100 dpi: the 30x30 manifold 15 x 15
    # inches, the latent scatter 12 x 10.
    assert picture_size(tmp_path / "latent_space.png") == (1500, 1500)
    assert picture_size(tmp_path / "label_clusters.png") == (1200, 1000)


def test_dcgan_two_short_epochs_grids_gif_and_samples(tmp_path):
    result = dcgan.main(["--source", "sample", "--epochs", "2", "--train-size", "512",
                         "--samples", "64", "--no-score", "--out", str(tmp_path)])
    logs = result["history"].history
    assert sorted(logs) == ["disc_loss", "gen_loss"]
    # From chance (2 log 2 = 1.386 for the discriminator) the discriminator gains first.
    assert logs["disc_loss"][1] < logs["disc_loss"][0] < 1.39
    for epoch in (1, 2):  # 4x4 digits of 28 px, 2 px apart
        assert picture_size(tmp_path / f"image_at_epoch_{epoch:04d}.png") == (122, 122)
    with Image.open(tmp_path / "dcgan.gif") as gif:
        assert gif.n_frames == 2
    assert not np.array_equal(*result["grids"])  # the same noise, a trained generator
    generated = np.load(tmp_path / "samples.npy")
    assert generated.shape == (64, 28, 28, 1) and np.abs(generated).max() <= 1.0
    # The generator's BatchNorm statistics moved: they are model state the step returns.
    before = jax.tree.leaves(dcgan.initial_state(0).model_state)
    after = jax.tree.leaves(result["state"].model_state)
    assert len(after) == 6 and not any(np.array_equal(a, b) for a, b in zip(before, after))

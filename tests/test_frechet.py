"""The Fréchet distance of experiments/frechet.py: the formula, the inputs it takes, and
the ordering it must give on real features (a convnet trained briefly on the sample)."""

import numpy as np
import pytest

from experiments import frechet


def test_the_distance_of_an_affine_copy_is_its_closed_form():
    # b = 2a + 3: S_b = 4 S_a commutes with S_a, so (S_a S_b)^(1/2) = 2 S_a and the
    # distance is |mu_a - mu_b|^2 + Tr(S_a + 4 S_a - 4 S_a) = |mu_a + 3|^2 + Tr(S_a).
    a = np.random.default_rng(0).normal(size=(500, 6)) @ np.diag([1, 2, 3, 1, 1, 0.5])
    b = 2 * a + 3
    expected = np.sum((a.mean(0) + 3) ** 2) + np.trace(np.cov(a, rowvar=False))
    assert frechet.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_both_ways_of_computing_it_agree_with_a_matrix_square_root():
    from scipy import linalg

    rng = np.random.default_rng(1)
    for samples in (300, 40):  # more samples than features, and fewer
        a = rng.normal(size=(samples, 50)) @ rng.normal(size=(50, 50))
        b = rng.normal(size=(samples + 7, 50)) @ rng.normal(size=(50, 50)) + 1.0
        s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        expected = (np.sum((a.mean(0) - b.mean(0)) ** 2)
                    + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real))
        assert frechet.frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="same D"):
        frechet.frechet_distance(a, b[:, :3])


def test_pixels_are_read_as_uint8_or_tanh_range():
    assert frechet.as_pixels(np.full((2, 28, 28), 255, np.uint8)).max() == 255.0
    assert frechet.as_pixels(np.full((2, 28, 28, 1), -1.0, np.float32)).max() == 0.0
    with pytest.raises(ValueError, match=r"float images must be in \[-1, 1\]"):
        frechet.as_pixels(np.full((2, 28, 28), 200.0, np.float32))
    with pytest.raises(ValueError, match="images must be"):
        frechet.as_pixels(np.zeros((2, 32, 32), np.uint8))


def test_real_digits_are_closer_to_real_digits_than_noisy_digits_or_noise(tmp_path):
    from fnlearn import data

    frechet.train_convnet(tmp_path / "convnet", epochs=1, train_size=2000)
    extract = frechet.load_features(tmp_path / "convnet")
    (x_train, _), (x_test, _) = data.load_mnist(source="sample")
    noise = np.random.default_rng(0).uniform(-1, 1, (1000, 28, 28)).astype(np.float32)
    noisy = ((x_train[:1000].astype(np.float32) / 127.5 - 1)
               + np.random.default_rng(1).normal(0, 0.5, (1000, 28, 28))).clip(-1, 1)
    real = frechet.score(x_train[:1000], x_test, extract)
    worse = frechet.score(noisy.astype(np.float32), x_test, extract)
    worst = frechet.score(noise, x_test, extract)
    assert real < 0.5 * worse < 0.5 * worst

"""The Fréchet distance of generated MNIST digits, on a trained MNIST convnet's features.

The features are the penultimate layer of ``fnlearn.models.keras_convnet()`` (the 1,600
flattened conv features that feed its Dense 10 softmax; Dropout is off in inference),
trained once by ``experiments/convnet.py --recipe keras`` (15 epochs, batch 128, 10% of
the training set held out, seed 0; about 99% test accuracy) and kept in ``--convnet-dir``
(an Orbax checkpoint: delete it to retrain). Each image set is summarized by the mean and
covariance of its features; the distance is
``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (FID's formula, MNIST features instead
of Inception's), in float64. Lower is closer to the real digits; the floor is the
distance between two sets of real digits (``--baseline``).

    python experiments/frechet.py SAMPLES.npy [SAMPLES2.npy ...] [--data-dir DIR]
                                  [--convnet-dir out/frechet_convnet] [--baseline]

``SAMPLES.npy``: ``(N, 28, 28)`` or ``(N, 28, 28, 1)`` images, uint8 in [0, 255] or
floats in [-1, 1] (a tanh generator's range, as the DCGAN programs save them).
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

import fnlearn as fl
from fnlearn import nn

DEFAULT_DIR = pathlib.Path("out/frechet_convnet")
INPUT_SHAPE = (28, 28, 1)


def feature_model() -> tuple[nn.Layer, nn.Layer]:
    """``(convnet, features)``: the classifier and its prefix up to the flattened features."""
    convnet = fl.models.keras_convnet()
    # Everything before Dropout and the Dense 10: a prefix, so its parameter names are the
    # convnet's own.
    return convnet, nn.serial(*convnet.children[:-2])


def train_convnet(directory: pathlib.Path, data_dir=None, *, epochs: int | None = None,
                  train_size: int | None = None) -> None:
    """Trains the Keras recipe's convnet and saves it to ``directory`` (Orbax).

    Args:
      directory: the checkpoint directory.
      data_dir: the MNIST IDX folder (default: $FNLEARN_DATA_DIR).
      epochs, train_size: shorten the recipe (tests); the recipe's 15 epochs on all of
        the training set by default.
    """
    from experiments import convnet

    print(f"Training the feature convnet (experiments/convnet.py --recipe keras) into "
          f"{directory}", flush=True)
    argv = ["--recipe", "keras", "--seed", "0", "--no-plots", "--verbose", "0"]
    for option, value in (("--data-dir", data_dir), ("--epochs", epochs),
                          ("--train-size", train_size)):
        argv += [option, str(value)] if value is not None else []
    result = convnet.main(argv)
    fl.save_checkpoint(directory, result["state"], result["history"],
                       metadata={"test_accuracy": float(result["test_accuracy"])})


def load_features(directory: pathlib.Path = DEFAULT_DIR, data_dir=None):
    """A function from images to their convnet features, training the convnet if missing."""
    convnet, features = feature_model()
    if fl.latest_checkpoint(directory) is None:
        train_convnet(directory, data_dir)
    try:
        params, _ = fl.restore_params(directory, convnet, INPUT_SHAPE)
    except fl.CheckpointError as error:
        raise fl.CheckpointError(f"{error}\nThe feature convnet in {directory} does not fit "
                                 "this fnlearn's keras_convnet; delete the folder to retrain "
                                 "it, and score every sample set again with the new one") from error
    names = nn.init(features, 0, INPUT_SHAPE)
    feature_params = {name: params[name] for name in names}

    def extract(images: np.ndarray) -> np.ndarray:
        return np.asarray(fl.predict(features, feature_params, as_pixels(images)),
                          np.float64)

    return extract


def as_pixels(images: np.ndarray) -> np.ndarray:
    """``(N, 28, 28, 1)`` float32 pixel values in [0, 255], what the convnet takes.

    uint8 images are taken as they are; float images are taken to be in [-1, 1].
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1:] != INPUT_SHAPE:
        raise ValueError(f"images must be (N, 28, 28) or (N, 28, 28, 1), got {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32)
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be uint8 or floats in [-1, 1], got {images.dtype}")
    if images.min() < -1.001 or images.max() > 1.001:
        raise ValueError(f"float images must be in [-1, 1] (a tanh generator's range), got "
                         f"values in [{images.min():.3f}, {images.max():.3f}]")
    return ((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.float32)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features (rows).

    ``Tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of
    ``S_a S_b``, which are those of the symmetric ``A S_b A`` with ``A = S_a^(1/2)``, so
    two symmetric eigendecompositions give it exactly (singular covariances included,
    where a general matrix square root is slow and loses accuracy). With fewer samples
    than features the same eigenvalues are the squared singular values of ``X_a X_b^T``
    (the centred, scaled samples), a smaller problem.
    """
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"features must be two (N, D) arrays with the same D and N >= 2, "
                         f"got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    x_a = (a - mu_a) / np.sqrt(len(a) - 1)
    x_b = (b - mu_b) / np.sqrt(len(b) - 1)
    if min(len(a), len(b)) < a.shape[1]:
        trace_root = np.sum(np.linalg.svd(x_a @ x_b.T, compute_uv=False))
    else:
        values, vectors = np.linalg.eigh(x_a.T @ x_a)
        root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
        product = root_a @ (x_b.T @ x_b) @ root_a
        trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(product), 0.0, None)))
    traces = np.sum(x_a ** 2) + np.sum(x_b ** 2)  # Tr(S_a) + Tr(S_b)
    return float(np.sum((mu_a - mu_b) ** 2) + traces - 2.0 * trace_root)


def score(samples: np.ndarray, real_images: np.ndarray, extract) -> float:
    """The Fréchet distance between ``samples`` and ``real_images`` on ``extract``'s features."""
    return frechet_distance(extract(samples), extract(real_images))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", nargs="*", type=pathlib.Path, help=".npy files of images")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--convnet-dir", type=pathlib.Path, default=DEFAULT_DIR,
                        help="the feature convnet's checkpoint (trained if missing; default: "
                             "%(default)s)")
    parser.add_argument("--baseline", action="store_true",
                        help="also score the first 10,000 training images (the floor)")
    args = parser.parse_args(argv)
    (x_train, _), (x_test, _) = fl.load_mnist(data_dir=args.data_dir)
    extract = load_features(args.convnet_dir, args.data_dir)
    real = extract(x_test)
    scores = {}
    if args.baseline:
        scores["mnist train[:10000]"] = frechet_distance(extract(x_train[:10000]), real)
    for path in args.samples:
        scores[str(path)] = frechet_distance(extract(np.load(path)), real)
    for name, value in scores.items():
        print(f"Fréchet distance to the {len(x_test)} test images: {value:.3f}  ({name})")
    return scores


if __name__ == "__main__":
    main()

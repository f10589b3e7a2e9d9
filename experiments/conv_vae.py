"""MNIST in a 2-D latent space: Keras's "Variational AutoEncoder" example in fnlearn.

Encoder: Conv2D 32 3x3 stride 2 "same" relu -> Conv2D 64 3x3 stride 2 "same" relu ->
Flatten -> Dense 16 relu, then two heads, ``z_mean`` and ``z_log_var`` (2 each), and the
sampling ``z = z_mean + exp(z_log_var / 2) * eps`` with ``eps`` from the step's key.
Decoder: Dense 7*7*64 relu -> Reshape (7, 7, 64) -> Conv2DTranspose 64 3x3 stride 2 relu
-> Conv2DTranspose 32 3x3 stride 2 relu -> Conv2DTranspose 1 3x3 sigmoid (all "same").
The example's custom ``train_step``: loss = per-image binary cross-entropy summed over
the pixels, plus the KL divergence, both averaged over the batch; Keras's Adam; batch
128; 30 epochs on the 70,000 training and test images together; Keras's initializers.
The logs are the example's ``loss``, ``reconstruction_loss`` and ``kl_loss``.

Keras on TensorFlow computes that cross-entropy from the sigmoid's input (it finds the
logits behind a sigmoid output), so fnlearn's decoder ends in logits and the loss takes
them (``optax.sigmoid_binary_cross_entropy``); ``decode`` applies the sigmoid.

At the end it saves the example's two pictures: ``latent_space.png``, the 30x30 grid of
digits decoded from ``z`` in [-1, 1]^2, and ``label_clusters.png``, ``z_mean`` of the
60,000 training images coloured by digit.

    python experiments/conv_vae.py [--epochs 30] [--batch-size 128] [--data-dir DIR] [--seed 0]
                                   [--out out/conv_vae] [--no-plots]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnlearn as fl
from fnlearn import nn

LATENT_DIM = 2
ENCODER = nn.serial(
    nn.Normalize(0.0, 255.0),  # the example's astype("float32") / 255
    nn.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
    nn.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
    nn.Flatten(),
    nn.Dense(16, "relu"),
)
Z_MEAN = nn.Dense(LATENT_DIM)
Z_LOG_VAR = nn.Dense(LATENT_DIM)
DECODER = nn.serial(
    nn.Dense(7 * 7 * 64, "relu"),
    nn.Reshape((7, 7, 64)),
    nn.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu"),
    nn.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
    nn.Conv2DTranspose(1, 3, padding="same"),  # the sigmoid is in ``decode`` and the loss
)
OPTIMIZER = fl.optim.keras_adam()


def init_params(seed: int) -> dict:
    """The encoder trunk, its two heads and the decoder."""
    keys = jax.random.split(jax.random.key(seed), 4)
    return {"encoder": nn.init(ENCODER, keys[0], (28, 28, 1)),
            "z_mean": nn.init(Z_MEAN, keys[1], (16,)),
            "z_log_var": nn.init(Z_LOG_VAR, keys[2], (16,)),
            "decoder": nn.init(DECODER, keys[3], (LATENT_DIM,))}


def encode(params, images):
    """``(z_mean, z_log_var)`` of uint8 images ``(N, 28, 28, 1)``."""
    h = ENCODER.apply(params["encoder"], images)
    return Z_MEAN.apply(params["z_mean"], h), Z_LOG_VAR.apply(params["z_log_var"], h)


def sampling(z_mean, z_log_var, key):
    """The example's ``Sampling`` layer, its randomness an explicit key."""
    epsilon = jax.random.normal(key, z_mean.shape, z_mean.dtype)
    return z_mean + jnp.exp(0.5 * z_log_var) * epsilon


def decode(params, z):
    """Images ``(N, 28, 28, 1)`` in [0, 1] from latent points."""
    return jax.nn.sigmoid(DECODER.apply(params["decoder"], z))


def losses(params, images, key):
    """Per image: ``(reconstruction_loss, kl_loss)``."""
    z_mean, z_log_var = encode(params, images)
    logits = DECODER.apply(params["decoder"], sampling(z_mean, z_log_var, key))
    data = images.astype(jnp.float32) / 255.0
    reconstruction = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, data), axis=(1, 2, 3))
    kl = jnp.sum(-0.5 * (1 + z_log_var - jnp.square(z_mean) - jnp.exp(z_log_var)), axis=1)
    return reconstruction, kl


def train_step(state, batch, key):
    """The example's ``VAE.train_step``: the batch means of both losses, one Adam step."""
    def total_loss(params):
        reconstruction, kl = losses(params, batch.x, key)
        reconstruction_loss = fl.masked_mean(reconstruction, batch.mask)
        kl_loss = fl.masked_mean(kl, batch.mask)
        return reconstruction_loss + kl_loss, (reconstruction_loss, kl_loss)

    (loss, (reconstruction_loss, kl_loss)), grads = jax.value_and_grad(
        total_loss, has_aux=True)(state.params)
    return fl.apply_gradients(state, grads, OPTIMIZER), {
        "loss": loss, "reconstruction_loss": reconstruction_loss, "kl_loss": kl_loss}


@jax.jit
def _z_mean(params, images):
    return encode(params, images)[0]


@jax.jit
def _decoded(params, z):
    return decode(params, z)


def z_means(params, images: np.ndarray, chunk: int = 2000) -> np.ndarray:
    """``z_mean`` of every image, in chunks."""
    return np.concatenate([np.asarray(_z_mean(params, images[i:i + chunk]))
                           for i in range(0, len(images), chunk)])


def plot_latent_space(params, path: pathlib.Path, n: int = 30, scale: float = 1.0,
                      figsize: int = 15) -> pathlib.Path:
    """The example's ``plot_latent_space``: an n x n manifold of digits decoded from a grid."""
    digit_size = 28
    grid_x = np.linspace(-scale, scale, n)
    grid_y = np.linspace(-scale, scale, n)[::-1]
    z = np.array([[xi, yi] for yi in grid_y for xi in grid_x], np.float32)
    digits = np.asarray(_decoded(params, z))[..., 0].reshape(n, n, digit_size, digit_size)
    figure = digits.transpose(0, 2, 1, 3).reshape(n * digit_size, n * digit_size)
    fig = fl.plots.figure(figsize=(figsize, figsize))
    ax = fig.add_subplot()
    start_range = digit_size // 2
    pixel_range = np.arange(start_range, n * digit_size + start_range, digit_size)
    ax.set_xticks(pixel_range, np.round(grid_x, 1))
    ax.set_yticks(pixel_range, np.round(grid_y, 1))
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.imshow(figure, cmap="Greys_r")
    fig.savefig(path)
    return path


def plot_label_clusters(params, images: np.ndarray, labels: np.ndarray,
                        path: pathlib.Path) -> pathlib.Path:
    """The example's ``plot_label_clusters``: ``z_mean`` of each image, coloured by digit."""
    z_mean = z_means(params, images)
    fig = fl.plots.figure(figsize=(12, 10))
    ax = fig.add_subplot()
    points = ax.scatter(z_mean[:, 0], z_mean[:, 1], c=labels)
    fig.colorbar(points, ax=ax)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    fig.savefig(path)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=None,
                        help="train on the first N images of train+test only (default: all)")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--source", choices=fl.data.SOURCES, default="auto",
                        help="where the data comes from (default: %(default)s; see docs/data.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                        help="0 silent, 1 progress bar, 2 one line per epoch (default)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/conv_vae"),
                        help="folder for the pictures (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "train_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    (x_train, y_train), (x_test, _) = data = fl.load_mnist(source=args.source,
                                                           data_dir=args.data_dir)
    mnist_digits = np.concatenate([x_train, x_test])[:args.train_size, ..., None]
    print(f"MNIST from {data.source}: training on {len(mnist_digits)} images (train + test)")
    params = init_params(args.seed)
    state = fl.TrainState.create(params, OPTIMIZER.init(params), seed=args.seed)
    started = time.perf_counter()
    state, history = fl.fit(None, mnist_digits, None, step=train_step, state=state,
                            epochs=args.epochs, batch_size=args.batch_size,
                            verbose=args.verbose)
    seconds = time.perf_counter() - started
    print(f"Training took {seconds:.0f}s")
    result = {"history": history, "state": state, "seconds": seconds, "source": data.source}
    if not args.no_plots:
        args.out.mkdir(parents=True, exist_ok=True)
        result["pictures"] = [
            plot_latent_space(state.params, args.out / "latent_space.png"),
            plot_label_clusters(state.params, x_train[..., None], y_train,
                                args.out / "label_clusters.png")]
        print("Pictures saved to " + ", ".join(str(p) for p in result["pictures"]))
    return result


if __name__ == "__main__":
    main()

"""MNIST with a variational autoencoder: PyTorch examples' ``vae/main.py`` in fnlearn.

Encoder 784 -> 400 relu -> (mu, logvar), 20 each; the reparameterization
``z = mu + eps * exp(logvar / 2)`` with ``eps`` drawn from an explicit key; decoder
20 -> 400 relu -> 784 sigmoid. Loss: binary cross-entropy summed over pixels and batch
plus the KL divergence to N(0, I) (Kingma and Welling, appendix B). Adam lr 1e-3,
batch 128, 10 epochs, PyTorch's ``nn.Linear`` initialization, images ``x / 255``.
The training step is ``fit``'s custom step; a callback prints the reference's two
lines after every epoch (the test loss samples ``z`` too, as the reference's does):

    ====> Epoch: 1 Average loss: 164.4350
    ====> Test set loss: 127.5367

and writes ``reconstruction_<epoch>.png`` (8 test digits over their reconstructions)
and ``sample_<epoch>.png`` (64 digits decoded from N(0, I) noise), as the reference does.

    python experiments/vae.py [--epochs 10] [--batch-size 128] [--data-dir DIR] [--seed 1]
                              [--out out/vae] [--no-plots]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnlearn as fl
from fnlearn import nn

LATENT = 20
# The reference's five nn.Linear layers by attribute name, and the features each takes.
LAYERS = {
    "fc1": (nn.Dense(400, "relu", init="torch"), 784),
    "fc21": (nn.Dense(LATENT, init="torch"), 400),
    "fc22": (nn.Dense(LATENT, init="torch"), 400),
    "fc3": (nn.Dense(400, "relu", init="torch"), LATENT),
    "fc4": (nn.Dense(784, init="torch"), 400),
}
OPTIMIZER = fl.optim.torch_adam(lr=1e-3)


def init_params(seed: int) -> dict:
    """The five layers' parameters, keyed by the reference's attribute names."""
    keys = jax.random.split(jax.random.key(seed), len(LAYERS))
    return {name: nn.init(layer, key, (features,))
            for (name, (layer, features)), key in zip(LAYERS.items(), keys)}


def _layer(params, name, x):
    return LAYERS[name][0].apply(params[name], x)


def encode(params, x):
    """``(mu, logvar)`` of images flattened to 784 values in [0, 1]."""
    h1 = _layer(params, "fc1", x)
    return _layer(params, "fc21", h1), _layer(params, "fc22", h1)


def reparameterize(mu, logvar, key):
    """``mu + eps * std`` with ``eps ~ N(0, I)`` drawn from ``key``."""
    std = jnp.exp(0.5 * logvar)
    return mu + jax.random.normal(key, std.shape, std.dtype) * std


def decode_logits(params, z):
    """The decoder before its sigmoid (the loss takes logits: see ``loss_function``)."""
    return _layer(params, "fc4", _layer(params, "fc3", z))


def decode(params, z):
    """Images, 784 values in [0, 1], from latent vectors."""
    return jax.nn.sigmoid(decode_logits(params, z))


def forward(params, x, key):
    """``(reconstruction logits, mu, logvar)`` of images ``x`` (N, 784) in [0, 1]."""
    mu, logvar = encode(params, x)
    return decode_logits(params, reparameterize(mu, logvar, key)), mu, logvar


def loss_function(recon_logits, x, mu, logvar):
    """Per example: binary cross-entropy summed over the pixels, plus the KL divergence.

    ``F.binary_cross_entropy(sigmoid(logits), x, reduction='sum')`` computed from the
    logits (log-sigmoid, with PyTorch's clamp of each log at -100), so its gradient stays
    finite where float32's sigmoid rounds to 0 or 1; elsewhere the two agree to rounding.
    """
    log_p = jnp.maximum(jax.nn.log_sigmoid(recon_logits), -100.0)
    log_not_p = jnp.maximum(jax.nn.log_sigmoid(-recon_logits), -100.0)
    bce = -jnp.sum(x * log_p + (1.0 - x) * log_not_p, axis=-1)
    kld = -0.5 * jnp.sum(1.0 + logvar - mu ** 2 - jnp.exp(logvar), axis=-1)
    return bce + kld


def pixels(images):
    """uint8 (N, 28, 28) images as ``transforms.ToTensor()`` gives them, flattened."""
    return images.reshape(images.shape[0], 784).astype(jnp.float32) / 255.0


def train_step(state, batch, key):
    """One Adam step on the batch's summed loss (``reduction='sum'``, real rows only)."""
    x = pixels(batch.x)

    def summed_loss(params):
        recon_logits, mu, logvar = forward(params, x, key)
        per_example = loss_function(recon_logits, x, mu, logvar)
        return jnp.sum(per_example * batch.mask), per_example

    (_, per_example), grads = jax.value_and_grad(summed_loss, has_aux=True)(state.params)
    return (fl.apply_gradients(state, grads, OPTIMIZER),
            {"loss": fl.masked_mean(per_example, batch.mask)})


@jax.jit
def test_loss_sum(params, images, key):
    """The summed loss over ``images`` (uint8), ``z`` sampled as in training."""
    x = pixels(images)
    recon_logits, mu, logvar = forward(params, x, key)
    return jnp.sum(loss_function(recon_logits, x, mu, logvar))


@jax.jit
def _reconstruct(params, images, key):
    return jax.nn.sigmoid(forward(params, pixels(images), key)[0])


class ReferenceLines(fl.Callback):
    """After every epoch: the reference's two lines, and its two pictures unless ``out`` is None.

    The test loss and the pictures draw their noise from ``key`` folded with the epoch,
    apart from the training's keys.
    """

    def __init__(self, x_test: np.ndarray, key: jax.Array, out: pathlib.Path | None):
        self.x_test, self.key, self.out = x_test, key, out
        self.test_losses: list[float] = []
        self.pictures: list[pathlib.Path] = []

    def on_epoch_end(self, epoch, state, logs, history):
        number = epoch + 1
        test_key, recon_key, sample_key = jax.random.split(jax.random.fold_in(self.key, number), 3)
        print(f"====> Epoch: {number} Average loss: {logs['loss']:.4f}")
        test_loss = float(test_loss_sum(state.params, self.x_test, test_key)) / len(self.x_test)
        self.test_losses.append(test_loss)
        print(f"====> Test set loss: {test_loss:.4f}", flush=True)
        if self.out is not None:
            originals = self.x_test[:8]
            recon = np.asarray(_reconstruct(state.params, originals, recon_key))
            comparison = np.concatenate([originals.reshape(8, 784) / 255.0, recon])
            sample = np.asarray(decode(state.params,
                                       jax.random.normal(sample_key, (64, LATENT))))
            self.pictures += [
                fl.plots.save_image_grid(comparison.reshape(16, 28, 28),
                                         self.out / f"reconstruction_{number}.png", nrow=8),
                fl.plots.save_image_grid(sample.reshape(64, 28, 28),
                                         self.out / f"sample_{number}.png", nrow=8)]
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--source", choices=fl.data.SOURCES, default="auto",
                        help="where the data comes from (default: %(default)s; see docs/data.md)")
    parser.add_argument("--seed", type=int, default=1, help="the reference's default: 1")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/vae"),
                        help="folder for the pictures (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    (x_train, _), (x_test, _) = data = fl.load_mnist(source=args.source, data_dir=args.data_dir)
    print(f"MNIST from {data.source}: {len(x_train)} train, {len(x_test)} test images")
    out = None if args.no_plots else args.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    params = init_params(args.seed)
    state = fl.TrainState.create(params, OPTIMIZER.init(params), seed=args.seed)
    lines = ReferenceLines(x_test, jax.random.fold_in(jax.random.key(args.seed), 1 << 20), out)
    started = time.perf_counter()
    state, history = fl.fit(None, x_train, None, step=train_step, state=state,
                            epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                            callbacks=[lines])
    seconds = time.perf_counter() - started
    print(f"Training took {seconds:.0f}s ({seconds / args.epochs:.1f}s per epoch, test loss "
          "included)")
    if out is not None:
        print(f"Pictures saved to {out}/reconstruction_<epoch>.png and sample_<epoch>.png")
    return {"history": history, "test_losses": lines.test_losses, "state": state,
            "pictures": lines.pictures, "seconds": seconds, "source": data.source}


if __name__ == "__main__":
    main()

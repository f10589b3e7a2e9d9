"""MNIST digits from noise: TensorFlow's DCGAN tutorial in fnlearn.

Generator: Dense 7*7*256 (no bias) -> BatchNorm -> LeakyReLU -> Reshape (7, 7, 256) ->
Conv2DTranspose 128 5x5 stride 1 -> BN -> LeakyReLU -> Conv2DTranspose 64 5x5 stride 2 ->
BN -> LeakyReLU -> Conv2DTranspose 1 5x5 stride 2 tanh (all "same", no bias).
Discriminator: Conv2D 64 5x5 stride 2 -> LeakyReLU -> Dropout 0.3 -> Conv2D 128 5x5
stride 2 -> LeakyReLU -> Dropout 0.3 -> Flatten -> Dense 1 (a logit). Keras's layers,
initializers and LeakyReLU slope (0.3); both networks Adam 1e-4 (Keras's); batch 256;
noise of 100; images scaled to [-1, 1]. As in the tutorial, one step computes both
losses from one forward pass (the generator's batch statistics in training mode, the
discriminator's dropout on) and updates both networks; the generator's BatchNorm
running statistics are model state, carried in the ``TrainState`` and returned by the
step. ``fit`` drives the step: one epoch is one XLA call.

After every epoch a 4x4 grid of digits from the same 16 noise vectors (the tutorial's
``seed``), in inference mode, goes to ``image_at_epoch_NNNN.png``; at the end the grids
become ``dcgan.gif``, 10,000 samples (``--samples``) go to ``samples.npy`` (floats in [-1, 1]) and,
unless ``--no-score``, their Fréchet distance to the 10,000 test images is printed
(``experiments/frechet.py``).

    python experiments/dcgan.py [--epochs 50] [--batch-size 256] [--data-dir DIR] [--seed 0]
                                [--out out/dcgan] [--no-plots] [--no-score]
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

NOISE_DIM = 100
EXAMPLES = 16


def make_generator_model() -> nn.Layer:
    return nn.serial(
        nn.Dense(7 * 7 * 256, use_bias=False), nn.BatchNorm(), nn.LeakyReLU(),
        nn.Reshape((7, 7, 256)),
        nn.Conv2DTranspose(128, 5, strides=1, padding="same", use_bias=False),
        nn.BatchNorm(), nn.LeakyReLU(),
        nn.Conv2DTranspose(64, 5, strides=2, padding="same", use_bias=False),
        nn.BatchNorm(), nn.LeakyReLU(),
        nn.Conv2DTranspose(1, 5, strides=2, padding="same", use_bias=False, activation="tanh"),
    )


def make_discriminator_model() -> nn.Layer:
    return nn.serial(
        nn.Conv2D(64, 5, strides=2, padding="same"), nn.LeakyReLU(), nn.Dropout(0.3),
        nn.Conv2D(128, 5, strides=2, padding="same"), nn.LeakyReLU(), nn.Dropout(0.3),
        nn.Flatten(), nn.Dense(1),
    )


GENERATOR = make_generator_model()
DISCRIMINATOR = make_discriminator_model()
GENERATOR_OPTIMIZER = fl.optim.keras_adam(1e-4)
DISCRIMINATOR_OPTIMIZER = fl.optim.keras_adam(1e-4)


def initial_state(seed: int) -> fl.TrainState:
    """Both networks' parameters, optimizer states and the generator's BatchNorm statistics."""
    g_key, d_key = jax.random.split(jax.random.key(seed))
    _, generator, generator_state = nn.init_with_state(GENERATOR, g_key, (NOISE_DIM,))
    discriminator = nn.init(DISCRIMINATOR, d_key, (28, 28, 1))
    return fl.TrainState.create(
        {"generator": generator, "discriminator": discriminator},
        {"generator": GENERATOR_OPTIMIZER.init(generator),
         "discriminator": DISCRIMINATOR_OPTIMIZER.init(discriminator)},
        {"generator": generator_state}, seed=seed)


def scaled(images):
    """uint8 (N, 28, 28, 1) images as the tutorial's ``(images - 127.5) / 127.5``."""
    return (images.astype(jnp.float32) - 127.5) / 127.5


def cross_entropy(target: float, logits, mask=None):
    """Keras's ``BinaryCrossentropy(from_logits=True)``: the mean over the (real) rows."""
    values = optax.sigmoid_binary_cross_entropy(logits[:, 0], jnp.full(logits.shape[:1], target))
    return jnp.mean(values) if mask is None else fl.masked_mean(values, mask)


def train_step(state, batch, key):
    """The tutorial's ``train_step``: both losses from one forward pass, both networks updated.

    The noise is a full batch even when the last batch of real images is short (the
    tutorial draws ``[BATCH_SIZE, noise_dim]`` every step); the real images' loss counts
    the real rows only.
    """
    noise_key, real_key, fake_key = jax.random.split(key, 3)
    noise = jax.random.normal(noise_key, (batch.x.shape[0], NOISE_DIM))
    images = scaled(batch.x)

    def losses(generator, discriminator):
        generated, generator_state = nn.apply(GENERATOR, generator, noise,
                                              state=state.model_state["generator"], train=True)
        real_output = DISCRIMINATOR.apply(discriminator, images, key=real_key, train=True)
        fake_output = DISCRIMINATOR.apply(discriminator, generated, key=fake_key, train=True)
        gen_loss = cross_entropy(1.0, fake_output)
        disc_loss = cross_entropy(1.0, real_output, batch.mask) + cross_entropy(0.0, fake_output)
        return (gen_loss, disc_loss), generator_state

    params = state.params
    (gen_loss, disc_loss), backward, generator_state = jax.vjp(
        losses, params["generator"], params["discriminator"], has_aux=True)
    # Two tapes, as the tutorial's: each loss differentiated for its own network only.
    gradients_of_generator, _ = backward((jnp.float32(1), jnp.float32(0)))
    _, gradients_of_discriminator = backward((jnp.float32(0), jnp.float32(1)))
    g_updates, g_opt = GENERATOR_OPTIMIZER.update(
        gradients_of_generator, state.opt_state["generator"], params["generator"])
    d_updates, d_opt = DISCRIMINATOR_OPTIMIZER.update(
        gradients_of_discriminator, state.opt_state["discriminator"], params["discriminator"])
    state = state._replace(
        params={"generator": optax.apply_updates(params["generator"], g_updates),
                "discriminator": optax.apply_updates(params["discriminator"], d_updates)},
        opt_state={"generator": g_opt, "discriminator": d_opt},
        model_state={"generator": generator_state})
    return state, {"gen_loss": gen_loss, "disc_loss": disc_loss}


@jax.jit
def generate(params, model_state, noise):
    """Images in [-1, 1] from noise, in inference mode (BatchNorm's running statistics)."""
    return nn.apply(GENERATOR, params["generator"], noise,
                    state=model_state["generator"])[0]


def samples(state: fl.TrainState, count: int, key: jax.Array, chunk: int = 1000) -> np.ndarray:
    """``count`` generated images, ``(count, 28, 28, 1)`` floats in [-1, 1]."""
    keys = jax.random.split(key, -(-count // chunk))
    parts = [generate(state.params, state.model_state, jax.random.normal(k, (chunk, NOISE_DIM)))
             for k in keys]
    return np.concatenate([np.asarray(p) for p in parts])[:count]


class EpochImages(fl.Callback):
    """After every epoch, the 4x4 grid of the tutorial's fixed ``seed`` noise, saved as PNG."""

    def __init__(self, seed_noise: jax.Array, out: pathlib.Path | None):
        self.seed_noise, self.out = seed_noise, out
        self.paths: list[pathlib.Path] = []
        self.grids: list[np.ndarray] = []

    def on_epoch_end(self, epoch, state, logs, history):
        predictions = np.asarray(generate(state.params, state.model_state, self.seed_noise))
        self.grids.append(fl.plots.image_grid(predictions, nrow=4))
        if self.out is not None:
            self.paths.append(fl.plots.save_image_grid(
                predictions, self.out / f"image_at_epoch_{epoch + 1:04d}.png", nrow=4,
                value_range=(-1.0, 1.0)))
        print(f"Time for epoch {epoch + 1} is {history.epoch_seconds[-1]:.1f} sec "
              f"(gen_loss {logs['gen_loss']:.4f}, disc_loss {logs['disc_loss']:.4f})",
              flush=True)
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=50, help="the tutorial's 50")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-size", type=int, default=None,
                        help="train on the first N training images only (default: all)")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--source", choices=fl.data.SOURCES, default="auto",
                        help="where the data comes from (default: %(default)s; see docs/data.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/dcgan"),
                        help="folder for the pictures and samples (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    parser.add_argument("--samples", type=int, default=10_000,
                        help="samples saved and scored at the end (default: %(default)s)")
    parser.add_argument("--no-score", action="store_true", help="skip the Fréchet distance")
    parser.add_argument("--convnet-dir", type=pathlib.Path, default=None,
                        help="the Fréchet feature convnet (default: experiments/frechet.py's)")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "train_size", "samples"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    (x_train, _), (x_test, _) = data = fl.load_mnist(source=args.source, data_dir=args.data_dir)
    x_train = x_train[:args.train_size, ..., None]
    print(f"MNIST from {data.source}: {len(x_train)} train images")
    args.out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    # The tutorial's ``seed``: 16 noise vectors reused every epoch, so the grids show progress.
    images = EpochImages(jax.random.normal(jax.random.fold_in(key, 1), (EXAMPLES, NOISE_DIM)),
                         None if args.no_plots else args.out)
    started = time.perf_counter()
    state, history = fl.fit(None, x_train, None, step=train_step,
                            state=initial_state(args.seed), epochs=args.epochs,
                            batch_size=args.batch_size, verbose=0, callbacks=[images])
    seconds = time.perf_counter() - started
    later = history.epoch_seconds[1:]
    print(f"Training took {seconds:.0f}s: first epoch {history.epoch_seconds[0]:.1f}s "
          "(compilation included)" + (f", then {np.mean(later):.1f}s per epoch" if later else ""))
    generated = samples(state, args.samples, jax.random.fold_in(key, 2))
    np.save(args.out / "samples.npy", generated)
    result = {"history": history, "state": state, "seconds": seconds, "samples": generated,
              "grids": images.grids, "pictures": images.paths, "source": data.source}
    if not args.no_plots:
        result["gif"] = fl.plots.save_gif(images.paths, args.out / "dcgan.gif")
        print(f"Pictures saved to {args.out}/image_at_epoch_NNNN.png and {result['gif']}")
    if not args.no_score:
        from experiments import frechet

        extract = frechet.load_features(args.convnet_dir or frechet.DEFAULT_DIR, args.data_dir)
        result["frechet"] = frechet.score(generated, x_test, extract)
        print(f"Fréchet distance of {len(generated)} samples to the {len(x_test)} test images: "
              f"{result['frechet']:.3f}")
    return result


if __name__ == "__main__":
    main()

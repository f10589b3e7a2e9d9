"""A two-network custom step trained by fit, for the custom-step tests.

    python tests/custom_step_worker.py CHECKPOINTS OUT.npz [--resume] [--epochs N]
        [--epoch-sleep S] [--devices D]

A toy adversarial pair on 2-D points: a generator maps noise to points, a discriminator
tells them from the data; one step updates both, each with its own Adam, from one
TrainState whose params, opt_state and model_state are dicts of the two. The final
state goes to OUT.npz and the run's steps, leaf by leaf, so a test can compare runs.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

import fnlearn as fl
from fnlearn import nn

GENERATOR = nn.serial(nn.Dense(16, "relu"), nn.Dense(2))
DISCRIMINATOR = nn.serial(nn.Dense(16, "relu"), nn.Dropout(0.2), nn.Dense(1))
OPTIMIZER = optax.adam(1e-2)


def data(n: int = 448) -> np.ndarray:
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, n)
    return np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32)


def initial_state(seed: int = 0) -> fl.TrainState:
    g = nn.init(GENERATOR, seed, (4,))
    d = nn.init(DISCRIMINATOR, seed + 1, (2,))
    return fl.TrainState.create({"generator": g, "discriminator": d},
                                {"generator": OPTIMIZER.init(g),
                                 "discriminator": OPTIMIZER.init(d)}, seed=seed)


def gan_step(state, batch, key):
    """One discriminator update, then one generator update, on the real rows of the batch."""
    noise_key, d_key, g_key = jax.random.split(key, 3)
    noise = jax.random.normal(noise_key, (batch.x.shape[0], 4))
    params = state.params

    def bce(logits, target):
        return fl.masked_mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], target),
                              batch.mask)

    def d_loss(d):
        fake = GENERATOR.apply(params["generator"], noise)
        real_logits = DISCRIMINATOR.apply(d, batch.x, key=d_key, train=True)
        fake_logits = DISCRIMINATOR.apply(d, fake, key=d_key, train=True)
        return bce(real_logits, 1.0) + bce(fake_logits, 0.0)

    d_value, d_grads = jax.value_and_grad(d_loss)(params["discriminator"])
    d_updates, d_opt = OPTIMIZER.update(d_grads, state.opt_state["discriminator"],
                                        params["discriminator"])
    discriminator = optax.apply_updates(params["discriminator"], d_updates)

    def g_loss(g):
        fake = GENERATOR.apply(g, noise)
        return bce(DISCRIMINATOR.apply(discriminator, fake, key=g_key, train=True), 1.0)

    g_value, g_grads = jax.value_and_grad(g_loss)(params["generator"])
    g_updates, g_opt = OPTIMIZER.update(g_grads, state.opt_state["generator"],
                                        params["generator"])
    generator = optax.apply_updates(params["generator"], g_updates)
    state = state._replace(params={"generator": generator, "discriminator": discriminator},
                           opt_state={"generator": g_opt, "discriminator": d_opt})
    return state, {"d_loss": d_value, "g_loss": g_value}


class SlowEpochs(fl.Callback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_epoch_end(self, epoch, state, logs, history):
        time.sleep(self.seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--epoch-sleep", type=float, default=0.0)
    parser.add_argument("--devices", type=int, default=0)
    args = parser.parse_args()
    mesh = fl.distributed.make_mesh(jax.devices()[:args.devices]) if args.devices else None
    callbacks = [fl.ModelCheckpoint(args.directory, keep=2)] if args.directory != "-" else []
    state, history = fl.fit(None, data(), None, step=gan_step, state=initial_state(),
                            epochs=args.epochs, batch_size=32, verbose=0, resume=args.resume,
                            mesh=mesh, callbacks=[*callbacks, SlowEpochs(args.epoch_sleep)])
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(args.out, **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves},
             history_g_loss=np.asarray(history.history["g_loss"]))
    print(f"done: epoch {int(state.epoch)}, step {int(state.step)}", flush=True)


if __name__ == "__main__":
    main()

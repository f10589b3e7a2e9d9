"""Linear regression trained with SGD and plotted: the article's PyTorch program in fnlearn.

By default it replays the article exactly: the data and initial parameters that
``torch.manual_seed(42)`` draws (stored in ``fnlearn/assets/regression_seed42.npz``
by ``scripts/make_regression_fixture.py``), SGD with lr 0.01, 1000 full-batch
epochs. The 1000 epochs are one compiled XLA call.

    python experiments/regression.py [--seed N] [--out out/regression]
"""

from __future__ import annotations

import argparse
import pathlib
from importlib import resources

import jax
import numpy as np

import fnlearn as fl

EPOCHS = 1000
LEARNING_RATE = 0.01


def article_data() -> tuple[np.ndarray, np.ndarray, dict]:
    """The article's X, y and nn.Linear(1, 1) initialization, as fnlearn parameters."""
    with resources.files("fnlearn").joinpath("assets/regression_seed42.npz").open("rb") as f:
        fixture = np.load(f)
        x, y = fixture["x"], fixture["y"]
        # PyTorch stores weight as (out, in); fnlearn's kernel is (in, out).
        params = {"dense_0": {"kernel": fixture["weight"].T.copy(), "bias": fixture["bias"]}}
    return x, y, params


def seeded_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh data from the same recipe, y = 4 + 3x + noise, drawn with JAX's PRNG."""
    x_key, noise_key = jax.random.split(jax.random.key(seed))
    x = 2 * jax.random.uniform(x_key, (100, 1))
    y = 4 + 3 * x + 0.1 * jax.random.normal(noise_key, (100, 1))
    return np.asarray(x), np.asarray(y)


def save_plot(x: np.ndarray, y: np.ndarray, predicted: np.ndarray, path: pathlib.Path) -> None:
    """Data points and the fitted line, as in the article."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.scatter(x[:, 0], y[:, 0], label="Original data")
    order = np.argsort(x[:, 0])
    ax.plot(x[order, 0], predicted[order, 0], "r-", label="Fitted line")
    ax.legend()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None,
                        help="draw fresh data and initialization with JAX's PRNG instead of "
                             "replaying the article's PyTorch draws")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/regression"),
                        help="folder for the plot (default: %(default)s)")
    args = parser.parse_args(argv)

    model = fl.nn.serial(fl.nn.Dense(1, init="torch"))
    if args.seed is None:
        x, y, initial_params = article_data()
    else:
        (x, y), initial_params = seeded_data(args.seed), None
    state, history = fl.fit(
        model, x, y, loss=fl.losses.mean_squared_error, optimizer=fl.optim.torch_sgd(LEARNING_RATE),
        epochs=args.epochs, batch_size=None, shuffle=False, seed=args.seed or 0, verbose=0,
        initial_params=initial_params)

    # The loss PyTorch prints at epoch k is computed before that epoch's update, as is
    # fnlearn's per-epoch loss: the same numbers.
    for epoch in range(100, args.epochs + 1, 100):
        print(f"Epoch [{epoch}/{args.epochs}], Loss: {history.history['loss'][epoch - 1]:.4f}")
    weight = float(state.params["dense_0"]["kernel"][0, 0])
    bias = float(state.params["dense_0"]["bias"][0])
    print(f"Final parameters: weight {weight:.4f}, bias {bias:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    plot = args.out / "regression.png"
    save_plot(x, y, fl.predict(model, state.params, x), plot)
    print(f"Plot saved to {plot}")
    return {"losses": history.history["loss"], "weight": weight, "bias": bias, "plot": plot}


if __name__ == "__main__":
    main()

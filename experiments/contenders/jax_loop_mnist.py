"""The article's MNIST recipe as the JAX tutorials write it: one jitted step per batch, Optax."""

import time

import numpy as np
from mnist_idx import load_mnist, missing, parse_args, report


def main(argv: list[str] | None = None) -> None:
    """Train and validate every epoch on the test set, then print `BENCH_RESULT`.

    Args:
      argv: command line, `None` for `sys.argv[1:]`.
    """
    args = parse_args(argv, __doc__)
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        missing("jax")

    (x, y), (xt, yt) = load_mnist(args.data_dir, args.limit, args.source)
    x = x.reshape(len(x), -1).astype(np.float32) / 255.0
    xt = xt.reshape(len(xt), -1).astype(np.float32) / 255.0
    y, yt = y.astype(np.int32), yt.astype(np.int32)

    key = jax.random.key(args.seed)
    key, k1, k2 = jax.random.split(key, 3)
    glorot = jax.nn.initializers.glorot_uniform()
    params = {
        "hidden": {"w": glorot(k1, (784, 128)), "b": jnp.zeros(128)},
        "out": {"w": glorot(k2, (128, 10)), "b": jnp.zeros(10)},
    }

    def predict(params, images, dropout_key=None):
        h = jax.nn.relu(images @ params["hidden"]["w"] + params["hidden"]["b"])
        if dropout_key is not None:
            keep = jax.random.bernoulli(dropout_key, 0.8, h.shape)
            h = jnp.where(keep, h / 0.8, 0.0)
        return h @ params["out"]["w"] + params["out"]["b"]

    def loss_fn(params, images, labels, dropout_key):
        logits = predict(params, images, dropout_key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    optimizer = optax.adam(1e-3, eps=1e-7)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, images, labels, dropout_key):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, dropout_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, images, labels):
        return jnp.mean(predict(params, images).argmax(-1) == labels)

    rng = np.random.default_rng(args.seed)
    epoch_seconds = []
    start = time.perf_counter()
    for _ in range(args.epochs):
        epoch_start = time.perf_counter()
        order = rng.permutation(len(x))
        for i in range(0, len(x), args.batch_size):
            idx = order[i : i + args.batch_size]
            key, dropout_key = jax.random.split(key)
            params, opt_state, loss = train_step(params, opt_state, x[idx], y[idx], dropout_key)
        val_accuracy = float(accuracy(params, xt, yt))
        epoch_seconds.append(time.perf_counter() - epoch_start)
        if len(epoch_seconds) == 1:
            first_epoch_end_unix = time.time()
    fit_s = time.perf_counter() - start

    report(
        first_epoch_s=epoch_seconds[0],
        first_epoch_end_unix=first_epoch_end_unix,
        fit_s=fit_s,
        epoch_seconds=epoch_seconds,
        val_accuracy=val_accuracy,
        test_accuracy=float(accuracy(params, xt, yt)),
        framework_version=f"jax {jax.__version__}, optax {optax.__version__}",
    )


if __name__ == "__main__":
    main()

"""The two MNIST convnet recipes in plain JAX: lax.conv_general_dilated, Optax, a jitted step."""

import math
import time

import numpy as np
from convnet_recipe import load_split, parse_args, report_epochs
from mnist_idx import missing

# (kernel height, width, input channels, output channels) per convolution; dense (in, out).
SHAPES = {
    "keras": {"conv1": (3, 3, 1, 32), "conv2": (3, 3, 32, 64), "out": (1600, 10)},
    "torch": {
        "conv1": (3, 3, 1, 32),
        "conv2": (3, 3, 32, 64),
        "fc1": (9216, 128),
        "out": (128, 10),
    },
}


def init_params(recipe: str, key, jax) -> dict:
    """Parameters with the recipe's framework's initializers.

    Args:
      recipe: "keras" (Glorot uniform, zero biases) or "torch" (uniform +-1/sqrt(fan_in)).
      key: a JAX random key.
      jax: the `jax` module.

    Returns:
      Layer name -> `{"w", "b"}`.
    """
    params = {}
    for name, shape in SHAPES[recipe].items():
        key, wkey, bkey = jax.random.split(key, 3)
        fan_in, fan_out = math.prod(shape[:-1]), shape[-1] * math.prod(shape[:-2])
        if recipe == "keras":
            limit = math.sqrt(6 / (fan_in + fan_out))
            w = jax.random.uniform(wkey, shape, minval=-limit, maxval=limit)
            b = jax.numpy.zeros(shape[-1])
        else:
            bound = 1 / math.sqrt(fan_in)
            w = jax.random.uniform(wkey, shape, minval=-bound, maxval=bound)
            b = jax.random.uniform(bkey, (shape[-1],), minval=-bound, maxval=bound)
        params[name] = {"w": w, "b": b}
    return params


def main(argv: list[str] | None = None) -> None:
    """Train epochs of training + validation, then print `BENCH_RESULT`.

    Args:
      argv: command line, `None` for `sys.argv[1:]`.
    """
    args = parse_args(argv, __doc__)
    if args.policy != "float32":
        raise SystemExit(f"the plain JAX loop runs in float32 only, not --policy {args.policy}")
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        missing("jax")

    x, y, xv, yv = load_split(args)
    y, yv = y.astype(np.int32), yv.astype(np.int32)
    keras = args.recipe == "keras"
    batch, val_batch = args.settings.batch_size, args.settings.val_batch_size
    steps_per_epoch = math.ceil(len(x) / batch)

    def conv(h, layer):
        out = jax.lax.conv_general_dilated(
            h, layer["w"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jax.nn.relu(out + layer["b"])

    def pool(h):
        return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def dropout(h, rate, key):
        if key is None:
            return h
        keep = jax.random.bernoulli(key, 1 - rate, h.shape)
        return jnp.where(keep, h / (1 - rate), 0.0)

    def log_probs(params, images, key=None):
        """Log-probabilities; dropout on when a key is given."""
        keys = jax.random.split(key) if key is not None else (None, None)
        h = images.astype(jnp.float32) / 255.0
        if keras:
            h = pool(conv(pool(conv(h, params["conv1"])), params["conv2"]))
            h = dropout(h.reshape(len(h), -1), 0.5, keys[0])
        else:
            h = (h - 0.1307) / 0.3081
            h = pool(conv(conv(h, params["conv1"]), params["conv2"]))
            h = dropout(h, 0.25, keys[0]).reshape(len(h), -1)
            h = jax.nn.relu(h @ params["fc1"]["w"] + params["fc1"]["b"])
            h = dropout(h, 0.5, keys[1])
        return jax.nn.log_softmax(h @ params["out"]["w"] + params["out"]["b"])

    def loss_fn(params, images, labels, key):
        # Softmax + categorical cross-entropy on one-hot labels (Keras) and log_softmax + NLL
        # (PyTorch) are both the mean of -log p[label].
        picked = jnp.take_along_axis(log_probs(params, images, key), labels[:, None], axis=1)
        return -picked.mean()

    if keras:
        optimizer = optax.adam(1e-3, eps=1e-7)
    else:
        # StepLR(step_size=1, gamma=0.7) stepped once per epoch, as a schedule over steps.
        lr = optax.exponential_decay(1.0, steps_per_epoch, 0.7, staircase=True)
        optimizer = optax.adadelta(lr, rho=0.9, eps=1e-6)

    @jax.jit
    def train_step(params, opt_state, images, labels, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def correct(params, images, labels):
        return jnp.sum(log_probs(params, images).argmax(-1) == labels)

    key = jax.random.key(args.seed)
    key, init_key = jax.random.split(key)
    params = init_params(args.recipe, init_key, jax)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(args.seed)
    epoch_seconds, train_seconds = [], []
    for _ in range(args.epochs):
        start = time.perf_counter()
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            key, step_key = jax.random.split(key)
            params, opt_state, loss = train_step(params, opt_state, x[idx], y[idx], step_key)
        loss.block_until_ready()
        train_seconds.append(time.perf_counter() - start)
        hits = sum(
            int(correct(params, xv[i : i + val_batch], yv[i : i + val_batch]))
            for i in range(0, len(xv), val_batch)
        )
        val_accuracy = hits / len(xv)
        epoch_seconds.append(time.perf_counter() - start)

    report_epochs(
        args,
        len(x),
        epoch_seconds,
        val_accuracy,
        f"jax {jax.__version__}, optax {optax.__version__}",
        train_seconds=train_seconds,
    )


if __name__ == "__main__":
    main()

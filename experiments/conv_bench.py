"""Micro benchmark: fnlearn's CPU convolution and pooling against lax and PyTorch.

Times each conv of the two MNIST convnets (forward, input gradient, kernel
gradient), the max pools (forward, gradient), and a whole jitted training step
of each model: the Keras "simple MNIST convnet" (batch 128, Adam) and the
PyTorch examples ``Net`` (batch 64, Adadelta), written here twice in plain JAX,
once with ``fnlearn.nn.cpu_conv``/``cpu_pool`` and once with
``lax.conv_general_dilated``/``reduce_window``, plus PyTorch on the same
machine (2 threads) when it is importable.

Other processes may share the cores, so the contenders alternate within every
repetition and the table gives medians; ratios are taken repetition by
repetition before the median.

    python experiments/conv_bench.py [--reps 7] [--calls 5]
        [--only ops|steps|precision|compile|bfloat16]
        [--clock wall|cpu] [--baseline OLD/fnlearn/nn/cpu_conv.py]

``--clock cpu`` times process CPU seconds (both threads) instead of wall time: on a
machine shared with other work it moves far less than wall time, so it suits
comparing two versions of the lowering. ``--baseline`` adds a contender whose
convolution comes from another ``cpu_conv.py`` (for instance an older commit's, from
``git archive``), its bias and ReLU applied after it.

``--only precision`` prints, instead of times, the bfloat16 error of each CPU path
(output, input gradient, kernel gradient) against float32 on the same values,
next to ``lax`` in bfloat16 with float32 accumulation. ``--only compile`` prints the
CPU seconds that XLA takes to compile ``fnlearn.train_step`` for both models
(``fnlearn.models``), persistent cache off. ``--only bfloat16`` times fnlearn's own
convolutions and pools with float32 and with bfloat16 inputs, side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from fnlearn.nn import cpu_conv, cpu_pool

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def lax_conv_relu(x, kernel, bias):
    return jax.nn.relu(cpu_conv.conv2d_lax(x, kernel) + bias)


def fast_conv_relu(x, kernel, bias):
    return cpu_conv.conv2d(x, kernel, bias=bias, activation="relu")


# "conv_relu" is what the models' layers run: Conv2D(..., activation="relu") with its bias.
LAX = {"conv": cpu_conv.conv2d_lax, "pool": cpu_pool.max_pool2d_lax, "conv_relu": lax_conv_relu}
FAST = {"conv": cpu_conv.conv2d, "pool": cpu_pool.max_pool2d, "conv_relu": fast_conv_relu}
# (name, batch, input NHWC, kernel HWIO): the convs of both models.
CONVS = [
    ("keras conv1", 128, (28, 28, 1), (3, 3, 1, 32)),
    ("keras conv2", 128, (13, 13, 32), (3, 3, 32, 64)),
    ("net conv1", 64, (28, 28, 1), (3, 3, 1, 32)),
    ("net conv2", 64, (26, 26, 32), (3, 3, 32, 64)),
]
POOLS = [("keras pool1", 128, (26, 26, 32)), ("keras pool2", 128, (11, 11, 64)),
         ("net pool", 64, (24, 24, 64))]


def baseline_ops(path: str) -> dict[str, Callable]:
    """The ops of another version's ``cpu_conv.py`` (its own module, beside this one)."""
    spec = importlib.util.spec_from_file_location("baseline_cpu_conv", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"conv": module.conv2d, "pool": cpu_pool.max_pool2d,
            "conv_relu": lambda x, kernel, bias: jax.nn.relu(module.conv2d(x, kernel) + bias)}


def timed(fn: Callable[[], object], calls: int, clock: Callable[[], float]) -> float:
    """Seconds of ``clock`` per call of ``fn``, averaged over ``calls`` calls."""
    start = clock()
    for _ in range(calls):
        fn()
    return (clock() - start) / calls


def race(contenders: dict[str, Callable[[], object]], reps: int, calls: int,
         clock: Callable[[], float] = time.perf_counter) -> dict[str, list]:
    """Times every contender once per repetition, in turn; returns seconds per call, per rep.

    The order rotates from one repetition to the next, so that no contender always
    runs right after the same other one (whose memory traffic it would inherit).
    """
    for fn in contenders.values():
        fn()
    names = list(contenders)
    times = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            times[name].append(timed(contenders[name], calls, clock))
    return times


def compile_seconds() -> None:
    """CPU seconds of ``jit(train_step).lower(...).compile()`` for both ``fnlearn.models``."""
    import numpy as np

    import fnlearn as fl

    fl.cache.disable_compilation_cache()
    recipes = [("Keras convnet, Adam", fl.models.keras_convnet(), optax.adam(1e-3), 128,
                "sparse_categorical_crossentropy"),
               ("PyTorch Net, Adadelta", fl.models.torch_mnist_net(), optax.adadelta(1.0), 64,
                "nll_loss")]
    print("| training step | lower (CPU s) | compile (CPU s) |\n| --- | --- | --- |")
    for label, model, optimizer, batch, loss in recipes:
        state = fl.init_state(model, optimizer, (28, 28, 1))
        x, y = np.zeros((batch, 28, 28, 1), np.uint8), np.zeros((batch,), np.int32)

        def step(state, x, y, model=model, loss=loss, optimizer=optimizer):
            return fl.train_step(state, x, y, model=model, loss=loss, optimizer=optimizer)

        start = time.process_time()
        lowered = jax.jit(step).lower(state, x, y)
        middle = time.process_time()
        lowered.compile()
        print(f"| {label} (batch {batch}) | {middle - start:.2f} | "
              f"{time.process_time() - middle:.2f} |", flush=True)


def jax_call(fn, *args):
    compiled = jax.jit(fn)
    return lambda: jax.block_until_ready(compiled(*args))


def conv_ops(batch, in_shape, k_shape, ops, dtype=jnp.float32):
    key_x, key_k, key_g = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(key_x, (batch, *in_shape)).astype(dtype)
    k = (jax.random.normal(key_k, k_shape) * 0.1).astype(dtype)
    g = jax.random.normal(key_g, ops["conv"](x, k).shape).astype(dtype)
    conv = ops["conv"]
    return {
        "forward": jax_call(conv, x, k),
        "input grad": jax_call(lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0], x, k, g),
        "kernel grad": jax_call(lambda x, k, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0], x, k, g),
    }


def pool_ops(batch, in_shape, ops, dtype=jnp.float32):
    x = jax.random.normal(jax.random.key(0), (batch, *in_shape)).astype(dtype)
    pool = ops["pool"]
    g = jax.random.normal(jax.random.key(1), pool(x).shape).astype(dtype)
    return {"forward": jax_call(pool, x),
            "grad": jax_call(lambda x, g: jax.vjp(pool, x)[1](g)[0], x, g)}


def torch_conv_ops(batch, in_shape, k_shape):
    h, w, c = in_shape
    x = torch.randn(batch, c, h, w, requires_grad=True)
    k = (torch.randn(k_shape[3], k_shape[2], k_shape[0], k_shape[1]) * 0.1).requires_grad_()
    g = torch.randn_like(F.conv2d(x, k))
    return {
        "forward": lambda: F.conv2d(x, k),
        "input grad": lambda: torch.autograd.grad(F.conv2d(x, k), x, g),
        "kernel grad": lambda: torch.autograd.grad(F.conv2d(x.detach(), k), k, g),
    }


def torch_pool_ops(batch, in_shape):
    h, w, c = in_shape
    x = torch.randn(batch, c, h, w, requires_grad=True)
    g = torch.randn_like(F.max_pool2d(x, 2))
    return {"forward": lambda: F.max_pool2d(x, 2),
            "grad": lambda: torch.autograd.grad(F.max_pool2d(x, 2), x, g)}


def dropout(key, x, rate):
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / (1 - rate), 0)


def keras_convnet(ops):
    """The Keras example's model as ``(init, loss)``; labels one-hot, softmax cross-entropy."""
    def init(key):
        keys = jax.random.split(key, 3)
        return {"c1": (jax.random.normal(keys[0], (3, 3, 1, 32)) * 0.3, jnp.zeros(32)),
                "c2": (jax.random.normal(keys[1], (3, 3, 32, 64)) * 0.06, jnp.zeros(64)),
                "d": (jax.random.normal(keys[2], (1600, 10)) * 0.03, jnp.zeros(10))}

    def loss(params, key, x, y):
        h = ops["pool"](ops["conv_relu"](x, *params["c1"]))
        h = ops["pool"](ops["conv_relu"](h, *params["c2"]))
        h = dropout(key, h.reshape(h.shape[0], -1), 0.5)
        logits = h @ params["d"][0] + params["d"][1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return init, loss


def torch_net(ops):
    """The PyTorch example's ``Net`` as ``(init, loss)``; log-softmax and NLL."""
    def init(key):
        keys = jax.random.split(key, 4)
        return {"c1": (jax.random.normal(keys[0], (3, 3, 1, 32)) * 0.3, jnp.zeros(32)),
                "c2": (jax.random.normal(keys[1], (3, 3, 32, 64)) * 0.06, jnp.zeros(64)),
                "f1": (jax.random.normal(keys[2], (9216, 128)) * 0.01, jnp.zeros(128)),
                "f2": (jax.random.normal(keys[3], (128, 10)) * 0.09, jnp.zeros(10))}

    def loss(params, key, x, y):
        k1, k2 = jax.random.split(key)
        h = ops["conv_relu"](x, *params["c1"])
        h = ops["conv_relu"](h, *params["c2"])
        h = dropout(k1, ops["pool"](h).reshape(x.shape[0], -1), 0.25)
        h = dropout(k2, jax.nn.relu(h @ params["f1"][0] + params["f1"][1]), 0.5)
        logits = jax.nn.log_softmax(h @ params["f2"][0] + params["f2"][1])
        return -jnp.take_along_axis(logits, y[:, None], 1).mean()

    return init, loss


def jax_step(model, optimizer, batch):
    init, loss = model
    params = init(jax.random.key(0))
    state = [params, optimizer.init(params), jax.random.key(1)]
    x = jax.random.uniform(jax.random.key(2), (batch, 28, 28, 1))
    y = jax.random.randint(jax.random.key(3), (batch,), 0, 10)

    @jax.jit
    def step(params, opt_state, key, x, y):
        key, sub = jax.random.split(key)
        value, grads = jax.value_and_grad(loss)(params, sub, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, value

    def run():
        *state[:3], value = step(*state, x, y)
        jax.block_until_ready(value)

    return run


def torch_step(name, batch):
    nn = torch.nn
    if name == "keras":
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(1600, 10))
        optimizer, loss = torch.optim.Adam(model.parameters(), 1e-3), nn.CrossEntropyLoss()
    else:
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, 10), nn.LogSoftmax(1))
        optimizer, loss = torch.optim.Adadelta(model.parameters(), 1.0), nn.NLLLoss()
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def run():
        optimizer.zero_grad()
        loss(model(x), y).backward()
        optimizer.step()

    return run


def row(label: str, times: dict[str, list], unit: str, batch: int = 0) -> str:
    """One table row: medians in ms (or img/s) and lax/fast, torch/fast ratios."""
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = {name: statistics.median(a / b for a, b in zip(t, times["fnlearn"]))
             for name, t in times.items() if name != "fnlearn"}
    show = (lambda s: f"{batch / s:,.0f}") if unit == "img/s" else (lambda s: f"{s * 1e3:.1f}")
    cells = [show(med[name]) for name in times] + [f"{r:.2f}x" for r in ratio.values()]
    return f"| {label} | " + " | ".join(cells) + " |"


# name: (batch, height, width, in, out, kernel, strides, padding, dilation, groups)
PRECISION_CASES = {
    "tapwise (3 channels)": (3, 10, 9, 3, 8, 3, (2, 1), "same", (1, 1), 1),
    "im2col (16 channels)": (2, 9, 8, 16, 8, 3, (1, 2), ((1, 2), (0, 1)), (2, 1), 1),
    "depthwise (6 groups)": (2, 9, 8, 6, 12, 3, (1, 1), "same", (1, 2), 6),
    "grouped im2col (2 groups)": (2, 9, 8, 8, 6, 3, (2, 2), "valid", (1, 1), 2),
}


def precision_row(n, h, w, c, o, k, strides, padding, dilation, groups) -> list[str]:
    """bfloat16 errors (largest difference / largest value) against float32, ours and lax's."""
    options = dict(strides=strides, padding=padding, dilation=dilation, groups=groups)
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (n, h, w, c)).astype(jnp.bfloat16)
    kernel = (jax.random.normal(keys[1], (k, k, c // groups, o)) * 0.3).astype(jnp.bfloat16)

    def with_grads(conv, x, kernel, g):
        y, vjp = jax.vjp(conv, x, kernel)
        return (y, *vjp(g.astype(y.dtype)))

    def wide(x, kernel):
        return cpu_conv.conv2d_lax(x, kernel, **options)

    def lax_bf16(x, kernel):  # lax's products in bfloat16, float32 sums, rounded once
        y = cpu_conv.conv2d_lax(x, kernel, preferred_element_type=jnp.float32, **options)
        return y.astype(x.dtype)

    def ours(x, kernel):
        return cpu_conv.conv2d(x, kernel, **options)

    x32, kernel32 = x.astype(jnp.float32), kernel.astype(jnp.float32)
    g = jax.random.normal(keys[2], wide(x32, kernel32).shape).astype(jnp.bfloat16)
    want = with_grads(wide, x32, kernel32, g)
    cells = []
    for got in (jax.jit(lambda x, k, g: with_grads(ours, x, k, g))(x, kernel, g),
                with_grads(lax_bf16, x, kernel, g)):
        errors = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)) / jnp.max(jnp.abs(b)))
                  for a, b in zip(got, want)]
        cells.append(" / ".join(f"{100 * e:.2f}%" for e in errors))
    return cells


def bfloat16_table(reps: int, calls: int, clock: Callable[[], float]) -> None:
    """fnlearn's convolutions and pools in float32 and in bfloat16: ms and the speed-up."""
    print("| op (ms, median) | float32 | bfloat16 | float32 time / bfloat16 time |\n"
          "| --- | --- | --- | --- |")
    cases = ([(f"{label} {{}} (batch {batch})", lambda dt, b=batch, i=i, k=k:
               conv_ops(b, i, k, FAST, dt)) for label, batch, i, k in CONVS]
             + [(f"{label} max {{}} (batch {batch})", lambda dt, b=batch, i=i:
                 pool_ops(b, i, FAST, dt)) for label, batch, i in POOLS])
    for label, make in cases:
        per = {"float32": make(jnp.float32), "bfloat16": make(jnp.bfloat16)}
        for op in per["float32"]:
            times = race({n: per[n][op] for n in per}, reps, calls, clock)
            med = {n: statistics.median(t) for n, t in times.items()}
            speedup = statistics.median(a / b for a, b in zip(times["float32"],
                                                              times["bfloat16"]))
            print(f"| {label.format(op)} | {med['float32'] * 1e3:.1f} | "
                  f"{med['bfloat16'] * 1e3:.1f} | {speedup:.2f}x |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="alternating repetitions")
    parser.add_argument("--calls", type=int, default=5, help="calls timed per repetition")
    parser.add_argument("--only", choices=["ops", "steps", "precision", "compile", "bfloat16"],
                        help="run one table only")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time wall seconds or process CPU seconds")
    parser.add_argument("--baseline", help="another version's cpu_conv.py, as a contender")
    args = parser.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.only == "compile":
        os.environ["FNLEARN_COMPILATION_CACHE"] = "0"
        compile_seconds()
        return
    if args.only == "bfloat16":
        bfloat16_table(args.reps, args.calls, clock)
        return
    if args.only == "precision":
        print("| bfloat16 path | fnlearn: output / dx / dkernel error | "
              "lax, float32 sums: output / dx / dkernel |\n| --- | --- | --- |")
        for name, case in PRECISION_CASES.items():
            print(f"| {name} | " + " | ".join(precision_row(*case)) + " |", flush=True)
        return
    old = baseline_ops(args.baseline) if args.baseline else None
    # PyTorch's OpenMP threads spin while they wait, which a CPU clock counts as work.
    with_torch = torch is not None and args.clock == "wall"
    names = ["fnlearn", "lax"] + (["baseline"] if old else []) + (["torch"] if with_torch else [])
    if with_torch:
        torch.set_num_threads(2)
    header = ("| " + " | ".join(names) + " | " + " | ".join(f"{n}/fnlearn" for n in names[1:])
              + " |")
    print(f"jax {jax.__version__}, devices {jax.devices()}, reps {args.reps} x {args.calls} calls, "
          f"{args.clock} clock, load average {os.getloadavg()[0]:.1f}"
          + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
             if with_torch else ""))
    if args.only != "steps":
        print(f"\n| op (ms, median) {header}\n|" + " --- |" * (2 * len(names)))
        for label, batch, in_shape, k_shape in CONVS:
            per = {"fnlearn": conv_ops(batch, in_shape, k_shape, FAST),
                   "lax": conv_ops(batch, in_shape, k_shape, LAX)}
            if old:
                per["baseline"] = conv_ops(batch, in_shape, k_shape, old)
            if with_torch:
                per["torch"] = torch_conv_ops(batch, in_shape, k_shape)
            for op in per["fnlearn"]:
                times = race({n: per[n][op] for n in per}, args.reps, args.calls, clock)
                print(row(f"{label} {op} (batch {batch})", times, "ms"), flush=True)
        for label, batch, in_shape in POOLS:
            per = {"fnlearn": pool_ops(batch, in_shape, FAST),
                   "lax": pool_ops(batch, in_shape, LAX)}
            if old:
                per["baseline"] = pool_ops(batch, in_shape, old)
            if with_torch:
                per["torch"] = torch_pool_ops(batch, in_shape)
            for op in per["fnlearn"]:
                times = race({n: per[n][op] for n in per}, args.reps, args.calls, clock)
                print(row(f"{label} max {op} (batch {batch})", times, "ms"), flush=True)
    if args.only != "ops":
        print(f"\n| train step (img/s, median) {header}\n|" + " --- |" * (2 * len(names)))
        models = [("keras", "Keras convnet, Adam", keras_convnet, optax.adam(1e-3), 128),
                  ("net", "PyTorch Net, Adadelta", torch_net, optax.adadelta(1.0), 64)]
        for name, label, model, optimizer, batch in models:
            steps = {"fnlearn": jax_step(model(FAST), optimizer, batch),
                     "lax": jax_step(model(LAX), optimizer, batch)}
            if old:
                steps["baseline"] = jax_step(model(old), optimizer, batch)
            if with_torch:
                steps["torch"] = torch_step(name, batch)
            times = race(steps, args.reps, args.calls, clock)
            print(row(f"{label} (batch {batch})", times, "img/s", batch), flush=True)


if __name__ == "__main__":
    main()

"""Mixed precision against PyTorch's: ``policy="mixed_bfloat16"`` and ``torch.autocast``.

The two MNIST convnets (dropout left out), the same float32 weights in both frameworks;
fnlearn under ``nn.with_policy(model, "mixed_bfloat16")``, PyTorch under
``torch.autocast("cpu", torch.bfloat16)`` (its convolutions and linear layers in bfloat16,
losses in float32). Neither is float32, and they round in different places (PyTorch
rounds every layer's output to bfloat16, its log-softmax included; fnlearn keeps
softmax and log-softmax in float32), so the checks are of two kinds: fnlearn's mixed
result is no further from the float32 one than PyTorch's mixed result is, and the two
mixed results agree within bounds that the measured differences fit in (docs/parity.md
lists the figures).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convnet_recipes import IMAGE, RECIPES, fnlearn_loss, nchw, torch_loss, without_dropout

import fnlearn
from fnlearn import nn, optim, parity

pytestmark = pytest.mark.parity

MIXED = "mixed_bfloat16"
# One batch: outputs and gradients. Measured (the first 64 MNIST test images, seed 2
# weights): output error against float32, fnlearn / PyTorch: 1.0e-4 / 2.9e-4 (Keras
# convnet probabilities), 1.1e-3 / 1.7e-2 (Net log-probabilities, which PyTorch rounds to
# bfloat16). Gradients, worst tensor, error relative to its largest entry: 0.046 / 0.045
# and 0.076 / 0.101.
BATCH = 64
GRADIENT_RATIO = 1.5  # fnlearn's worst gradient error over PyTorch's, at most
# Training: per-step losses of 50 SGD steps of 16 images. Measured: mixed against mixed
# within 1.1e-2 (Keras convnet) and 2.9e-3 (Net), the first 10 steps within 5.5e-4 and
# 1.0e-3; each mixed run's drift from its own float32 run, fnlearn / PyTorch, 1.3e-2 /
# 1.2e-2 and 3.0e-3 / 2.7e-3.
STEPS, STEP_BATCH = 50, 16
LOSS_RTOL, EARLY_STEPS, EARLY_RTOL = 3e-2, 10, 3e-3
DRIFT_RATIO = 2.0  # fnlearn's drift from float32 over PyTorch's, at most
SGD_LR = {"keras_convnet": 0.1, "torch_mnist_net": 0.01}


def worst(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def torch_forward(torch, module, x, mixed: bool):
    with torch.autocast("cpu", torch.bfloat16, enabled=mixed):
        return module(torch.from_numpy(nchw(x)))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_outputs_and_gradients_against_torch_autocast(torch, recipe, mnist_images, record):
    x, y = mnist_images[0][:BATCH], mnist_images[1][:BATCH]
    model = without_dropout(RECIPES[recipe]())
    params = nn.init(model, 2, IMAGE)
    module = parity.to_torch_module(model, IMAGE, params).train()
    exact = np.asarray(nn.apply(model, params, x)[0])
    ours = np.asarray(nn.apply(nn.with_policy(model, MIXED), params, x)[0])
    theirs_tensor = torch_forward(torch, module, x, mixed=True)
    assert theirs_tensor.dtype == torch.bfloat16  # autocast is on
    theirs = theirs_tensor.float().detach().numpy()
    assert worst(module(torch.from_numpy(nchw(x))).detach().numpy(), exact) < 1e-5
    record("outputs, max abs error vs float32", f"fnlearn {worst(ours, exact):.1e}, PyTorch "
           f"{worst(theirs, exact):.1e}; fnlearn vs PyTorch {worst(ours, theirs):.1e}")
    assert worst(ours, exact) <= worst(theirs, exact)
    assert worst(ours, theirs) <= 2 * worst(theirs, exact)

    loss = fnlearn_loss(recipe)

    def gradients(policy):
        mixed = nn.with_policy(model, policy)
        return jax.grad(lambda p: jnp.mean(loss(y, nn.apply(mixed, p, x)[0])))(params)

    exact_grads, our_grads = gradients("float32"), gradients(MIXED)
    module.zero_grad()
    with torch.autocast("cpu", torch.bfloat16):
        out = module(torch.from_numpy(nchw(x)))
        torch_loss(torch, recipe)(out.float() if recipe == "keras_convnet" else out,
                                  torch.from_numpy(y)).backward()
    with torch.no_grad():  # the gradients, read back in fnlearn's layout
        for parameter in module.parameters():
            parameter.copy_(parameter.grad)
    their_grads = parity.variables_from_torch(module, model=model, input_shape=IMAGE)[0]

    def relative(grads):
        return jax.tree.map(lambda g, e: worst(g, e) / float(np.max(np.abs(e))), grads,
                            exact_grads)

    ours_error = max(jax.tree.leaves(relative(our_grads)))
    theirs_error = max(jax.tree.leaves(relative(their_grads)))
    assert jax.tree.structure(their_grads) == jax.tree.structure(exact_grads)
    record("gradients, worst tensor vs float32 (of its largest entry)",
           f"fnlearn {ours_error:.3f}, PyTorch {theirs_error:.3f}")
    assert ours_error <= GRADIENT_RATIO * theirs_error


def fnlearn_losses(recipe, model, data, policy):
    x, y = data
    optimizer = optim.torch_sgd(SGD_LR[recipe])
    state = fnlearn.init_state(model, optimizer, IMAGE, seed=2)
    step = jax.jit(functools.partial(fnlearn.train_step, model=nn.with_policy(model, policy),
                                     loss=fnlearn_loss(recipe), optimizer=optimizer))
    losses = []
    for i in range(STEPS):
        batch = slice(i * STEP_BATCH, (i + 1) * STEP_BATCH)
        state, logs = step(state, jnp.asarray(x[batch]), jnp.asarray(y[batch]))
        losses.append(float(logs["loss"]))
    return np.array(losses)


def torch_losses(torch, recipe, model, data, mixed: bool):
    x, y = data
    initial = fnlearn.init_state(model, optim.torch_sgd(0.1), IMAGE, seed=2).params
    module = parity.to_torch_module(model, IMAGE, initial).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=SGD_LR[recipe])
    loss_fn = torch_loss(torch, recipe)
    losses = []
    for i in range(STEPS):
        batch = slice(i * STEP_BATCH, (i + 1) * STEP_BATCH)
        with torch.autocast("cpu", torch.bfloat16, enabled=mixed):
            out = module(torch.from_numpy(nchw(x[batch])))
            loss = loss_fn(out.float() if recipe == "keras_convnet" else out,
                           torch.from_numpy(y[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_training_losses_against_torch_autocast(torch, recipe, mnist_images, record):
    data = mnist_images[0][:STEPS * STEP_BATCH], mnist_images[1][:STEPS * STEP_BATCH]
    model = without_dropout(RECIPES[recipe]())
    ours, ours_exact = (fnlearn_losses(recipe, model, data, p) for p in (MIXED, "float32"))
    theirs, theirs_exact = (torch_losses(torch, recipe, model, data, m) for m in (True, False))
    assert theirs[-10:].mean() < 0.8 * theirs[:10].mean()  # it trains
    early = parity.compare(f"first {EARLY_STEPS} losses", ours[:EARLY_STEPS],
                           theirs[:EARLY_STEPS], rtol=EARLY_RTOL)
    whole = parity.compare("per-step loss", ours, theirs, rtol=LOSS_RTOL)
    drift = parity.compare("fnlearn mixed vs float32", ours, ours_exact)
    their_drift = parity.compare("PyTorch mixed vs float32", theirs, theirs_exact)
    record("per-step loss, mixed vs mixed", f"max rel {whole.max_rel_error:.1e} (first "
           f"{EARLY_STEPS}: {early.max_rel_error:.1e}); drift from float32: fnlearn "
           f"{drift.max_rel_error:.1e}, PyTorch {their_drift.max_rel_error:.1e}")
    assert early.passed, str(early)
    assert whole.passed, str(whole)
    assert drift.max_rel_error <= DRIFT_RATIO * their_drift.max_rel_error


def _relative(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


# The recurrent layers, same weights, 16 random N(0, 1) sequences of 28 steps of 28
# features, last output: error against float32, fnlearn's mixed_bfloat16 (float32 state) /
# PyTorch's autocast, measured 2.8e-3 / 3.1e-3 (LSTM(64), which autocast runs in bfloat16,
# states included) and 2.6e-3 / 3.8e-3 (GRU(64), which autocast returns in float32).
@pytest.mark.parametrize("kind, torch_dtype", [("lstm", "bfloat16"), ("gru", "float32")])
def test_recurrent_layers_against_torch_autocast(torch, kind, torch_dtype):
    layer = {"lstm": nn.LSTM, "gru": nn.GRU}[kind](64, convention="torch")
    model = nn.serial(layer)
    params = nn.init(model, 0, (28, 28))
    module = parity.to_torch_module(model, (28, 28), params)
    x = np.random.default_rng(1).normal(size=(16, 28, 28)).astype(np.float32)
    reference = nn.apply(model, params, x)[0]
    ours = nn.apply(nn.with_policy(model, MIXED), params, x)[0]
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs = module(torch.from_numpy(x))
    assert str(theirs.dtype) == f"torch.{torch_dtype}"
    ours_error = _relative(ours, reference)
    theirs_error = _relative(theirs.float().numpy(), reference)
    assert ours_error < 5e-3 and ours_error <= 1.2 * theirs_error, (ours_error, theirs_error)

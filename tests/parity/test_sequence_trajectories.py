"""100 training steps of an LSTM model and a Transformer-block model, dropout off: per-step
loss and final weights against PyTorch and Keras (the tolerances of test_trajectories).

Each step is one full batch of 64 random sequences, so one fnlearn epoch is one step.
"""

import numpy as np
import pytest
from test_trajectories import LOSS_RTOL, WEIGHT_ATOL, WEIGHT_RTOL, crossentropy_from_logits

import fnlearn
from fnlearn import nn, optim, parity

pytestmark = pytest.mark.parity

STEPS = 100
SHAPE = (10, 5)


def lstm(convention):
    return nn.serial(nn.LSTM(8, convention=convention), nn.Dense(4))


def transformer():
    return nn.serial(nn.Dense(8), nn.TransformerEncoderLayer(8, 2, 16, 0.0, "gelu",
                                                             norm_first=True),
                     nn.TransformerEncoderLayer(8, 2, 16, 0.0), nn.GlobalAveragePooling1D(),
                     nn.Dense(4))


MODELS = {"lstm_torch": lambda: lstm("torch"), "lstm_keras": lambda: lstm("keras"),
          "transformer": transformer}
# Rates at which each model trains smoothly over the 100 steps (the loss at least 20%
# down, hardly a step up): where the loss oscillates, rounding differences between the
# frameworks grow with each swing and the comparison stops measuring the math.
SGD_LR = {"lstm_torch": 0.3, "lstm_keras": 0.1, "transformer": 0.03}
ADAM_LR = {"lstm_torch": 3e-3, "transformer": 1e-3}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, *SHAPE)).astype(np.float32)
    y = (np.argmax(x.sum(1) @ rng.normal(size=(SHAPE[1], 4)), axis=1)).astype(np.int32)
    return x, y


def fnlearn_run(name, data, optimizer):
    x, y = data
    params = nn.init(MODELS[name](), 5, SHAPE)
    state, history = fnlearn.fit(MODELS[name](), x, y, loss=crossentropy_from_logits,
                                 optimizer=optimizer, epochs=STEPS, batch_size=None,
                                 shuffle=False, initial_params=params, verbose=0)
    return np.array(history.history["loss"]), state.params, params


def torch_run(torch, name, data, params, make_optimizer):
    x, y = data
    module = parity.to_torch_module(MODELS[name](), SHAPE, params)
    optimizer = make_optimizer(module.parameters())
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y).long()
    trajectory = []
    for _ in range(STEPS):
        loss = torch.nn.functional.cross_entropy(module(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trajectory.append(loss.item())
    return np.array(trajectory), parity.variables_from_torch(
        module, model=MODELS[name](), input_shape=SHAPE)[0]


def keras_run(keras, name, data, params, optimizer):
    x, y = data
    keras_model = parity.to_keras_model(MODELS[name](), SHAPE, params)
    keras_model.compile(optimizer=optimizer,
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trajectory = [float(keras_model.train_on_batch(x, y)) for _ in range(STEPS)]
    return np.array(trajectory), parity.variables_from_keras(
        keras_model, model=MODELS[name](), input_shape=SHAPE)[0]


# Attention's key bias adds the same number to every score of a query, which the softmax
# cancels: its gradient is zero in exact arithmetic, so each framework moves it by its own
# rounding noise alone (Adam scales that noise up to full-size steps). It is left out of
# the weight comparison; the losses show it changes nothing.
NOISE_ONLY = "self_attn/key/bias"


def without_key_biases(tree, path=""):
    kept = {}
    for name, value in tree.items():
        where = f"{path}/{name}" if path else name
        if isinstance(value, dict):
            kept[name] = without_key_biases(value, where)
        elif not where.endswith(NOISE_ONLY):
            kept[name] = value
    return kept


def check(record, ours, theirs, loss_rtol, weight_atol=WEIGHT_ATOL):
    (our_losses, our_params), (their_losses, their_params) = ours, theirs
    assert their_losses[-1] < 0.8 * their_losses[0]  # it trains, or agreeing says little
    result = parity.compare("per-step loss", our_losses, their_losses, rtol=loss_rtol)
    record("per-step loss", f"max rel error {result.max_rel_error:.1e} at step "
           f"{result.worst_index[0] + 1} (loss {their_losses[0]:.4f} -> {their_losses[-1]:.4f})")
    assert result.passed, str(result)
    worst = 0.0
    for comparison in parity.assert_close_trees(
            without_key_biases(our_params), without_key_biases(their_params),
            rtol=WEIGHT_RTOL, atol=weight_atol, context=f"after {STEPS} steps"):
        worst = max(worst, comparison.max_abs_error)
    record("final weights", f"max abs error {worst:.1e}")


@pytest.mark.parametrize("name", ["lstm_torch", "transformer"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_vs_torch(torch, data, name, optimizer, record):
    sgd, adam = optimizer == "sgd", optimizer == "adam"
    rate = SGD_LR[name] if sgd else ADAM_LR[name]
    ours = fnlearn_run(name, data, optim.torch_sgd(rate) if sgd else optim.torch_adam(rate))
    make = ((lambda p: torch.optim.SGD(p, lr=rate)) if not adam
            else (lambda p: torch.optim.Adam(p, lr=rate)))
    # Adam divides each gradient by its running size, so small gradients (biases) turn
    # rounding differences into relative ones: 1e-4 absolute after 100 steps of the
    # Transformer (measured worst 8.3e-5), 1e-5 elsewhere.
    weight_atol = 1e-4 if (adam and name == "transformer") else WEIGHT_ATOL
    check(record, ours[:2], torch_run(torch, name, data, ours[2], make), LOSS_RTOL[optimizer],
          weight_atol)


@pytest.mark.parametrize("name", ["lstm_keras", "transformer"])
def test_vs_keras(keras, data, name, record):
    ours = fnlearn_run(name, data, optim.keras_sgd(SGD_LR[name]))
    check(record, ours[:2], keras_run(keras, name, data, ours[2],
                                      keras.optimizers.SGD(SGD_LR[name])),
          LOSS_RTOL["sgd"])

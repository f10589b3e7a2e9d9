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


def check(record, ours, theirs, loss_rtol):
    (our_losses, our_params), (their_losses, their_params) = ours, theirs
    assert their_losses[-1] < 0.8 * their_losses[0]  # it trains, or agreeing says little
    result = parity.compare("per-step loss", our_losses, their_losses, rtol=loss_rtol)
    record("per-step loss", f"max rel error {result.max_rel_error:.1e} at step "
           f"{result.worst_index[0] + 1} (loss {their_losses[0]:.4f} -> {their_losses[-1]:.4f})")
    assert result.passed, str(result)
    worst = 0.0
    for comparison in parity.assert_close_trees(our_params, their_params, rtol=WEIGHT_RTOL,
                                                atol=WEIGHT_ATOL, context=f"after {STEPS} steps"):
        worst = max(worst, comparison.max_abs_error)
    record("final weights", f"max abs error {worst:.1e}")


@pytest.mark.parametrize("name", ["lstm_torch", "transformer"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_vs_torch(torch, data, name, optimizer, record):
    ours = fnlearn_run(name, data, optim.torch_sgd(0.1) if optimizer == "sgd"
                       else optim.torch_adam(3e-3))
    make = ((lambda p: torch.optim.SGD(p, lr=0.1)) if optimizer == "sgd"
            else (lambda p: torch.optim.Adam(p, lr=3e-3)))
    check(record, ours[:2], torch_run(torch, name, data, ours[2], make), LOSS_RTOL[optimizer])


@pytest.mark.parametrize("name", ["lstm_keras", "transformer"])
def test_vs_keras(keras, data, name, record):
    ours = fnlearn_run(name, data, optim.keras_sgd(0.1))
    check(record, ours[:2], keras_run(keras, name, data, ours[2], keras.optimizers.SGD(0.1)),
          LOSS_RTOL["sgd"])

"""Adadelta with StepLR per epoch: 30 steps (3 epochs of 10 batches) vs PyTorch.

The PyTorch MNIST example's optimizer: ``Adadelta(lr=1.0)`` and
``StepLR(step_size=1, gamma=0.7)`` stepped after each epoch. fnlearn's
``torch_adadelta(schedule=step_lr(...))`` reads the epoch from the training state,
so ``fit`` needs no steps-per-epoch arithmetic.
"""

import numpy as np
import pytest

import fnlearn
from fnlearn import losses, nn, optim, parity

pytestmark = pytest.mark.parity

EPOCHS, BATCHES, BATCH = 3, 10, 8
# Per-epoch mean loss, relative, and final weights: float32 rounding only.
LOSS_RTOL = 1e-5
WEIGHT_RTOL, WEIGHT_ATOL = 1e-4, 1e-5


def model():
    return nn.serial(nn.Dense(16, "tanh", init="torch"), nn.Dense(4, init="torch"))


def crossentropy_from_logits(labels, logits):
    return losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def test_adadelta_with_step_lr_vs_torch(torch, record):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(BATCHES * BATCH, 6)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(6, 4)), axis=1).astype(np.int32)
    params = nn.init(model(), 1, (6,))

    optimizer = optim.torch_adadelta(schedule=optim.step_lr(1.0, step_size=1, gamma=0.7))
    state, history = fnlearn.fit(model(), x, y, loss=crossentropy_from_logits,
                                 optimizer=optimizer, epochs=EPOCHS, batch_size=BATCH,
                                 shuffle=False, initial_params=params, verbose=0)

    module = parity.to_torch_module(model(), (6,), params)
    torch_optimizer = torch.optim.Adadelta(module.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(torch_optimizer, step_size=1, gamma=0.7)
    epoch_losses, rates = [], []
    for _ in range(EPOCHS):
        rates.append(scheduler.get_last_lr()[0])
        total = 0.0
        for b in range(BATCHES):
            inputs = torch.from_numpy(x[b * BATCH:(b + 1) * BATCH])
            labels = torch.from_numpy(y[b * BATCH:(b + 1) * BATCH]).long()
            loss = torch.nn.functional.cross_entropy(module(inputs), labels)
            torch_optimizer.zero_grad()
            loss.backward()
            torch_optimizer.step()
            total += loss.item()
        epoch_losses.append(total / BATCHES)
        scheduler.step()

    np.testing.assert_allclose(history.history["learning_rate"], rates, rtol=1e-6)
    assert epoch_losses[-1] < 0.9 * epoch_losses[0]  # it trains, so agreeing means something
    result = parity.compare("per-epoch loss", np.array(history.history["loss"]),
                            np.array(epoch_losses), rtol=LOSS_RTOL)
    record("per-epoch loss", f"max rel error {result.max_rel_error:.1e}")
    assert result.passed, str(result)
    for comparison in parity.assert_close_trees(state.params,
                                                parity.params_from_torch(module, params),
                                                rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL,
                                                context="after 30 steps"):
        record(comparison.name, f"max abs error {comparison.max_abs_error:.1e}")

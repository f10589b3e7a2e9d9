"""The VAE of experiments/vae.py against PyTorch examples' ``vae/main.py``, 20 Adam steps.

Both start from the torch model's weights (converted: kernel = weight.T) and draw the
same noise: the reference's ``torch.randn_like`` is replaced by the ``eps`` fnlearn's
step draws from the key ``fit`` gives it (``fl.step.step_key``). The batches are the
first 20 x 128 images of the sample, in order. Compared: the per-step loss (the batch's
summed BCE + KLD before the update, PyTorch's ``loss.item()``) against PyTorch as the
reference runs it (float32), and the final weights against PyTorch in float64.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnlearn as fl
from experiments import vae

pytestmark = pytest.mark.parity

STEPS, BATCH = 20, 128
# The suite's Adam tolerance (tests/parity/test_trajectories.py): optax's float32 bias
# correction differs from PyTorch's float64 one by up to 2e-5 relative in early steps.
LOSS_RTOL = 3e-5
WEIGHT_RTOL, WEIGHT_ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def images():
    (x, _), _ = fl.data.load_mnist(source="sample")
    return x[:STEPS * BATCH]


def torch_vae(torch):
    F = torch.nn.functional

    class VAE(torch.nn.Module):  # the reference's class, as written
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(784, 400)
            self.fc21 = torch.nn.Linear(400, 20)
            self.fc22 = torch.nn.Linear(400, 20)
            self.fc3 = torch.nn.Linear(20, 400)
            self.fc4 = torch.nn.Linear(400, 784)
            self.noise = None  # set before each step: the eps fnlearn draws

        def encode(self, x):
            h1 = F.relu(self.fc1(x))
            return self.fc21(h1), self.fc22(h1)

        def reparameterize(self, mu, logvar):
            std = torch.exp(0.5 * logvar)
            return mu + self.noise * std

        def decode(self, z):
            return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

        def forward(self, x):
            mu, logvar = self.encode(x.view(-1, 784))
            return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def loss_function(recon_x, x, mu, logvar):
        bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce + kld

    torch.manual_seed(1)
    return VAE(), loss_function


def params_of(module) -> dict:
    return {name: {"kernel": jnp.asarray(layer.weight.detach().numpy().T),
                   "bias": jnp.asarray(layer.bias.detach().numpy())}
            for name, layer in module.named_children()}


def torch_run(torch, module, loss_function, images, noises, dtype):
    """The reference's training loop for ``STEPS`` batches in order; the per-step losses."""
    module = module.to(dtype)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    data = torch.from_numpy(images.astype(np.float32) / 255.0).view(-1, 1, 28, 28).to(dtype)
    losses = []
    for i, noise in enumerate(noises):
        batch = data[i * BATCH:(i + 1) * BATCH]
        module.noise = torch.from_numpy(noise).to(dtype)
        optimizer.zero_grad()
        recon, mu, logvar = module(batch)
        loss = loss_function(recon, batch, mu, logvar)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses), params_of(module.float())


def test_twenty_steps_agree_with_pytorch(torch, images, record):
    module, loss_function = torch_vae(torch)
    params = params_of(module)
    start = fl.TrainState.create(params, vae.OPTIMIZER.init(params), seed=7)
    mask = jnp.ones((BATCH,), jnp.bool_)
    step = jax.jit(vae.train_step)
    ours, noises, state = [], [], start
    for i in range(STEPS):
        key = fl.step.step_key(state)
        noises.append(np.array(jax.random.normal(key, (BATCH, vae.LATENT))))
        state, metrics = step(state, fl.Batch(images[i * BATCH:(i + 1) * BATCH], None, mask),
                              key)
        ours.append(float(metrics["loss"]) * BATCH)

    theirs, _ = torch_run(torch, copy.deepcopy(module), loss_function, images, noises,
                          torch.float32)
    assert theirs[-1] < 0.5 * theirs[0]  # it trains: about 550 -> 240 per image
    result = fl.parity.compare("per-step loss", np.array(ours), theirs, rtol=LOSS_RTOL)
    record("per-step loss", f"max rel error {result.max_rel_error:.1e} at step "
           f"{result.worst_index[0] + 1} (loss per image {theirs[0] / BATCH:.1f} -> "
           f"{theirs[-1] / BATCH:.1f})")
    assert result.passed, str(result)

    # Weights against PyTorch in float64. PyTorch float32 itself ends up to 1.1e-3 away
    # from float64 in a few dozen fc1 weights (pixels lit in few images: their gradients
    # are rounding-sized and Adam, normalizing, turns a rounding difference into a step);
    # fnlearn's float32 stays within 7.3e-6 of float64 everywhere.
    _, exact = torch_run(torch, copy.deepcopy(module), loss_function, images, noises,
                         torch.float64)
    for comparison in fl.parity.assert_close_trees(state.params, exact, rtol=WEIGHT_RTOL,
                                                   atol=WEIGHT_ATOL,
                                                   context=f"after {STEPS} steps"):
        record(comparison.name, f"max abs error {comparison.max_abs_error:.1e}")

    # fit drives the same step with the same keys: the same weights, bit for bit.
    fitted, _ = fl.fit(None, images, None, step=vae.train_step, state=start, epochs=1,
                       batch_size=BATCH, shuffle=False, verbose=0)
    for leaf, expected in zip(jax.tree.leaves(fitted.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(expected))

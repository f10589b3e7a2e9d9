"""PyTorch examples' ``vae/main.py`` (the classic loss: BCE + KLD), run as written.

Two changes, neither in the training: MNIST comes from the IDX files (``mnist_idx``) as
tensors through a shuffling ``DataLoader`` (what ``datasets.MNIST`` + ``ToTensor`` give),
and ``save_image`` is a small PIL grid (torchvision is not installed here). It prints
the reference's lines, then ``BENCH_RESULT {json}`` with the test losses and timings.

    python experiments/contenders/torch_vae.py --data-dir DIR [--epochs 10] [--out out/torch_vae]
                                               [--threads N]
"""

import argparse
import os
import time

import numpy as np
from mnist_idx import load_mnist, missing, report

try:
    import torch
    import torch.utils.data
    from torch import nn, optim
    from torch.nn import functional as F
except ImportError:
    missing("torch")


def save_image(tensor, path, nrow=8, padding=2):
    """torchvision's ``save_image`` for (N, 1, 28, 28) values in [0, 1]: a grid, black padding."""
    from PIL import Image

    images = tensor.numpy()[:, 0]
    count, height, width = images.shape
    columns = min(nrow, count)
    rows = -(-count // columns)
    grid = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding))
    for i, image in enumerate(images):
        top, left = padding + (i // columns) * (height + padding), padding + (i % columns) * (
            width + padding)
        grid[top:top + height, left:left + width] = image
    Image.fromarray(np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)).save(path)


parser = argparse.ArgumentParser(description='VAE MNIST Example')
parser.add_argument('--batch-size', type=int, default=128, metavar='N',
                    help='input batch size for training (default: 128)')
parser.add_argument('--epochs', type=int, default=10, metavar='N',
                    help='number of epochs to train (default: 10)')
parser.add_argument('--seed', type=int, default=1, metavar='S',
                    help='random seed (default: 1)')
parser.add_argument('--log-interval', type=int, default=10, metavar='N',
                    help='how many batches to wait before logging training status')
parser.add_argument('--data-dir', default=os.environ.get('FNLEARN_DATA_DIR'))
parser.add_argument('--source', choices=('idx', 'sample'), default='idx')
parser.add_argument('--out', default='out/torch_vae', help='folder for the pictures')
parser.add_argument('--threads', type=int, default=None,
                    help="torch's CPU threads (default: torch's own choice)")
args = parser.parse_args()

if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
device = torch.device("cpu")
os.makedirs(args.out, exist_ok=True)

(train_images, _), (test_images, _) = load_mnist(args.data_dir, source=args.source)


def tensors(images):
    # transforms.ToTensor(): (N, 1, 28, 28) float32 in [0, 1]; the labels are unused.
    x = torch.from_numpy(images.copy()).float().div(255.0).unsqueeze(1)
    return torch.utils.data.TensorDataset(x, torch.zeros(len(x)))


train_loader = torch.utils.data.DataLoader(tensors(train_images), batch_size=args.batch_size,
                                           shuffle=True)
test_loader = torch.utils.data.DataLoader(tensors(test_images), batch_size=args.batch_size,
                                          shuffle=True)


class VAE(nn.Module):
    def __init__(self):
        super().__init__()

        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5*logvar)
        eps = torch.randn_like(std)
        return mu + eps*std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


model = VAE().to(device)
optimizer = optim.Adam(model.parameters(), lr=1e-3)


# Reconstruction + KL divergence losses summed over all elements and batch
def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction='sum')

    # see Appendix B from VAE paper:
    # Kingma and Welling. Auto-Encoding Variational Bayes. ICLR, 2014
    # https://arxiv.org/abs/1312.6114
    # 0.5 * sum(1 + log(sigma^2) - mu^2 - sigma^2)
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    return BCE + KLD


def train(epoch):
    model.train()
    train_loss = 0
    for batch_idx, (data, _) in enumerate(train_loader):
        data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
        if batch_idx % args.log_interval == 0:
            print(f'Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)} '
                  f'({100. * batch_idx / len(train_loader):.0f}%)]\tLoss: '
                  f'{loss.item() / len(data):.6f}')

    print(f'====> Epoch: {epoch} Average loss: {train_loss / len(train_loader.dataset):.4f}')


def test(epoch):
    model.eval()
    test_loss = 0
    with torch.no_grad():
        for i, (data, _) in enumerate(test_loader):
            data = data.to(device)
            recon_batch, mu, logvar = model(data)
            test_loss += loss_function(recon_batch, data, mu, logvar).item()
            if i == 0:
                n = min(data.size(0), 8)
                comparison = torch.cat([data[:n],
                                        recon_batch.view(args.batch_size, 1, 28, 28)[:n]])
                save_image(comparison.cpu(),
                           os.path.join(args.out, 'reconstruction_' + str(epoch) + '.png'),
                           nrow=n)

    test_loss /= len(test_loader.dataset)
    print(f'====> Test set loss: {test_loss:.4f}')
    return test_loss


if __name__ == "__main__":
    test_losses, epoch_seconds = [], []
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
        train(epoch)
        test_losses.append(test(epoch))
        with torch.no_grad():
            sample = torch.randn(64, 20).to(device)
            sample = model.decode(sample).cpu()
            save_image(sample.view(64, 1, 28, 28),
                       os.path.join(args.out, 'sample_' + str(epoch) + '.png'))
        epoch_seconds.append(time.perf_counter() - epoch_started)
    report(test_losses=test_losses, epoch_seconds=epoch_seconds,
           seconds=time.perf_counter() - started, threads=torch.get_num_threads(),
           framework_version=torch.__version__)

"""The two sequence recipes in plain PyTorch: tensors in memory, epoch timing.

`rnn` is PyTorch examples' `mnist_rnn/main.py` `Net` as written there (its `Dropout2d`
layers on 2-D inputs included); `vit` the Vision Transformer of `sequence_recipe.VIT`.
"""

import math
import os
import time
import warnings

from mnist_idx import missing
from sequence_recipe import VIT, load_split, parse_args, report_epochs


def build(recipe: str, torch):
    """The recipe's model."""
    nn, F = torch.nn, torch.nn.functional
    if recipe == "rnn":
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = nn.LSTM(input_size=28, hidden_size=64, batch_first=True)
                self.batchnorm = nn.BatchNorm1d(64)
                self.dropout1 = nn.Dropout2d(0.25)
                self.dropout2 = nn.Dropout2d(0.5)
                self.fc1 = nn.Linear(64, 32)
                self.fc2 = nn.Linear(32, 10)

            def forward(self, input):
                input = input.reshape(-1, 28, 28)
                output, hidden = self.rnn(input)
                output = output[:, -1, :]
                output = self.batchnorm(output)
                output = self.dropout1(output)
                output = self.fc1(output)
                output = F.relu(output)
                output = self.dropout2(output)
                output = self.fc2(output)
                return F.log_softmax(output, dim=1)

        return Net()

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            p, d = VIT["patch"], VIT["width"]
            self.embed = nn.Conv2d(1, d, p, stride=p)
            self.cls = nn.Parameter(torch.zeros(1, 1, d))
            self.pos = nn.Parameter(torch.randn(1, (28 // p) ** 2 + 1, d) * 0.02)
            layer = nn.TransformerEncoderLayer(d, VIT["heads"], VIT["mlp"], dropout=0.0,
                                               activation="gelu", batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, VIT["depth"],
                                                 enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, 10)

        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
            return self.head(self.norm(self.encoder(x))[:, 0])

    return ViT()


def main(argv=None) -> None:
    """Train epochs of training + validation, then print `BENCH_RESULT`."""
    args = parse_args(argv, __doc__)
    try:
        import torch
    except ImportError:
        missing("torch")
    torch.set_num_threads(args.threads or os.cpu_count())
    torch.manual_seed(args.seed)
    warnings.filterwarnings("ignore", message="dropout2d: Received a 2-D input")
    x, y, xv, yv = load_split(args)

    def prepare(images):  # ToTensor then Normalize((0.1307,), (0.3081,)), once up front
        return (torch.from_numpy(images.copy())[:, None].float() / 255.0 - 0.1307) / 0.3081

    x, xv = prepare(x), prepare(xv)
    y, yv = torch.from_numpy(y.astype("int64")), torch.from_numpy(yv.astype("int64"))
    model = build(args.recipe, torch)
    batch, val_batch = args.settings.batch_size, args.settings.val_batch_size
    steps = math.ceil(len(x) / batch)
    if args.recipe == "rnn":
        optimizer = torch.optim.Adadelta(model.parameters(), lr=0.1)
        per_epoch = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        per_step, criterion = None, torch.nn.NLLLoss()
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=VIT["lr"],
                                      weight_decay=VIT["weight_decay"])
        warmup = VIT["warmup_epochs"] * steps
        total = (args.schedule_epochs or args.epochs) * steps

        def factor(step):
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup)
                                       / max(total - warmup, 1)))

        per_epoch, criterion = None, torch.nn.CrossEntropyLoss()
        per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def validate() -> float:
        model.eval()
        with torch.no_grad():
            correct = sum((model(xv[i:i + val_batch]).argmax(1) == yv[i:i + val_batch]).sum()
                          .item() for i in range(0, len(xv), val_batch))
        model.train()
        return correct / len(xv)

    epoch_seconds, train_seconds, accuracies = [], [], []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            loss = criterion(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if per_step is not None:
                per_step.step()
        train_seconds.append(time.perf_counter() - start)
        accuracies.append(validate())
        if per_epoch is not None:
            per_epoch.step()
        epoch_seconds.append(time.perf_counter() - start)
        print(f"epoch {epoch + 1}: test accuracy {accuracies[-1] * 100:.2f}%, "
              f"{epoch_seconds[-1]:.1f}s", flush=True)
    report_epochs(args, len(x), epoch_seconds, accuracies,
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads",
                  train_seconds=train_seconds)


if __name__ == "__main__":
    main()

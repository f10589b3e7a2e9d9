"""The two MNIST convnet recipes in plain PyTorch, tensors in memory, all cores, epoch timing."""

import os
import time

from convnet_recipe import load_split, parse_args, report_epochs
from mnist_idx import missing


def build(recipe: str, nn):
    """The recipe's model, as its original program writes it.

    Args:
      recipe: "keras" or "torch".
      nn: the `torch.nn` module.

    Returns:
      `(model, loss)`: the model and a loss of (outputs, int labels).
    """
    if recipe == "keras":
        # Keras' Dense(10, softmax) + categorical cross-entropy on one-hot labels is, in PyTorch,
        # logits + CrossEntropyLoss on class ids: the same function.
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(1600, 10),
        )  # fmt: skip
        return model, nn.CrossEntropyLoss()
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10), nn.LogSoftmax(1),
    )  # fmt: skip
    return model, nn.NLLLoss()


def main(argv: list[str] | None = None) -> None:
    """Train epochs of training + validation, then print `BENCH_RESULT`.

    Args:
      argv: command line, `None` for `sys.argv[1:]`.
    """
    args = parse_args(argv, __doc__)
    try:
        import torch
        from torch import nn
    except ImportError:
        missing("torch")

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(args.seed)
    x, y, xv, yv = load_split(args)
    # NCHW float tensors in memory: no DataLoader. The torch recipe's Normalize is applied once
    # up front, as its DataLoader would per batch.
    mean, std = (0.1307, 0.3081) if args.recipe == "torch" else (0.0, 1.0)

    def prepare(images):
        return (torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float() / 255.0 - mean) / std

    x, xv = prepare(x), prepare(xv)
    y, yv = torch.from_numpy(y.astype("int64")), torch.from_numpy(yv.astype("int64"))
    model, criterion = build(args.recipe, nn)
    if args.recipe == "keras":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
        scheduler = None
    else:
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    batch, val_batch = args.settings.batch_size, args.settings.val_batch_size

    def validate() -> float:
        model.eval()
        with torch.no_grad(), autocast:
            correct = sum(
                (model(xv[i : i + val_batch]).argmax(1) == yv[i : i + val_batch]).sum().item()
                for i in range(0, len(xv), val_batch)
            )
        model.train()
        return correct / len(xv)

    # mixed_bfloat16: PyTorch's own recipe for it, autocast around forward and loss.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16,
                              enabled=args.policy == "mixed_bfloat16")
    epoch_seconds, train_seconds = [], []
    for _ in range(args.epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            with autocast:
                loss = criterion(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_seconds.append(time.perf_counter() - start)
        val_accuracy = validate()
        if scheduler is not None:
            scheduler.step()
        epoch_seconds.append(time.perf_counter() - start)

    report_epochs(
        args,
        len(x),
        epoch_seconds,
        val_accuracy,
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        train_seconds=train_seconds,
    )


if __name__ == "__main__":
    main()

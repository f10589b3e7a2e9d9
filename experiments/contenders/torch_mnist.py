"""The article's MNIST recipe in plain PyTorch: MLP 128, dropout 0.2, Adam, batch 32, 5 epochs."""

import time

from mnist_idx import load_mnist, missing, parse_args, report


def main(argv: list[str] | None = None) -> None:
    """Train and validate every epoch on the test set, then print `BENCH_RESULT`.

    Args:
      argv: command line, `None` for `sys.argv[1:]`.
    """
    args = parse_args(argv, __doc__)
    try:
        import torch
        from torch import nn
    except ImportError:
        missing("torch")

    torch.manual_seed(args.seed)
    (x, y), (xt, yt) = load_mnist(args.data_dir, args.limit, args.source)
    # Whole data set as tensors in memory, like Keras gets it: no DataLoader overhead.
    x = torch.from_numpy(x.astype("float32") / 255.0)
    xt = torch.from_numpy(xt.astype("float32") / 255.0)
    y = torch.from_numpy(y.astype("int64"))
    yt = torch.from_numpy(yt.astype("int64"))

    # Softmax is folded into CrossEntropyLoss, the PyTorch way of writing Keras' softmax + SCCE.
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    criterion = nn.CrossEntropyLoss()

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            correct = (model(xt).argmax(1) == yt).sum().item()
        model.train()
        return correct / len(yt)

    epoch_seconds = []
    start = time.perf_counter()
    for _ in range(args.epochs):
        epoch_start = time.perf_counter()
        order = torch.randperm(len(x))
        for i in range(0, len(x), args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = criterion(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val_accuracy = accuracy()
        epoch_seconds.append(time.perf_counter() - epoch_start)
        if len(epoch_seconds) == 1:
            first_epoch_end_unix = time.time()
    fit_s = time.perf_counter() - start

    report(
        first_epoch_s=epoch_seconds[0],
        first_epoch_end_unix=first_epoch_end_unix,
        fit_s=fit_s,
        epoch_seconds=epoch_seconds,
        val_accuracy=val_accuracy,
        test_accuracy=accuracy(),
        framework_version=f"torch {torch.__version__}",
    )


if __name__ == "__main__":
    main()

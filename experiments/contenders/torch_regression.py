"""The article's PyTorch linear regression (seed 42, 100 points, SGD 0.01, 1000 full-batch epochs).

Prints the same ten `Epoch [k/1000], Loss: ...` lines as the reference program, saves the same
plot (to `--plot`), then one `BENCH_RESULT` line.
"""

import argparse
import time

from mnist_idx import missing, report


def main(argv: list[str] | None = None) -> None:
    """Fit y = 4 + 3x + noise by SGD, print the loss every 100 epochs and `BENCH_RESULT`.

    Args:
      argv: command line, `None` for `sys.argv[1:]`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--plot", default="torch_linear_regression.png", help="'' to skip")
    args = parser.parse_args(argv)
    try:
        import torch
        from torch import nn
    except ImportError:
        missing("torch")

    torch.manual_seed(args.seed)
    x = 2 * torch.rand(100, 1)
    y = 4 + 3 * x + 0.1 * torch.randn(100, 1)
    model = nn.Linear(1, 1)
    criterion = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    start = time.perf_counter()
    for epoch in range(args.epochs):
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 100 == 0:
            print(f"Epoch [{epoch + 1}/{args.epochs}], Loss: {loss.item():.4f}")
    fit_s = time.perf_counter() - start

    if args.plot:
        # The reference program plots too, so its process time includes matplotlib.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with torch.no_grad():
            predicted = model(x)
        plt.scatter(x.numpy(), y.numpy(), label="Original data")
        plt.plot(x.numpy(), predicted.numpy(), "r-", label="Fitted line")
        plt.legend()
        plt.savefig(args.plot)

    report(
        fit_s=fit_s,
        weight=model.weight.item(),
        bias=model.bias.item(),
        framework_version=f"torch {torch.__version__}",
    )


if __name__ == "__main__":
    main()

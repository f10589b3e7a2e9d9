"""Writes the article's regression data and initial parameters, drawn by PyTorch.

The reference program seeds PyTorch with 42, draws X and y, then builds
``nn.Linear(1, 1)``; this replays exactly those draws in that order and stores
the float32 values, so fnlearn reproduces the article without PyTorch.

    python scripts/make_regression_fixture.py   # needs torch (pip install ".[parity]")
"""

import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parents[1] / "fnlearn" / "assets" / "regression_seed42.npz"


def main() -> None:
    torch.manual_seed(42)
    x = 2 * torch.rand(100, 1)
    y = 4 + 3 * x + 0.1 * torch.randn(100, 1)
    linear = torch.nn.Linear(1, 1)
    np.savez(OUT, x=x.numpy(), y=y.numpy(),
             weight=linear.weight.detach().numpy(), bias=linear.bias.detach().numpy(),
             torch_version=np.array(torch.__version__))
    print(f"wrote {OUT}: weight {linear.weight.item():.8f}, bias {linear.bias.item():.8f}")


if __name__ == "__main__":
    main()

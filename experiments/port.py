"""Port a PyTorch model to fnlearn mid-training: train in PyTorch, import, train on in fnlearn.

The model is the PyTorch examples' ``mnist/main.py`` ``Net``, written in PyTorch as
the example writes it. It trains for an epoch in PyTorch (Adadelta, lr 1.0, batch 64)
on the first ``--limit`` training images, normalized as the example's transforms do.
``fnlearn.parity.from_torch`` then imports it in one call (model, weights, a report of
how closely the imported model computes the original), and fnlearn trains it on for
an epoch with the same optimizer (``torch_adadelta``; its running averages start
afresh, PyTorch's optimizer state is not carried over). The test accuracy is printed
after each part.

    python experiments/port.py [--limit 6000] [--epochs 1] [--data-dir DIR] [--out out/port]

Needs PyTorch (``pip install 'fnlearn[parity]'``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

import fnlearn as fl

MEAN, STD = 0.1307, 0.3081  # the example's transforms.Normalize((0.1307,), (0.3081,))
BATCH_SIZE, TEST_BATCH_SIZE = 64, 1000


def define_net(torch):
    """The PyTorch examples' ``Net``, as the example writes it."""
    F = torch.nn.functional

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 32, 3, 1)
            self.conv2 = torch.nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = torch.nn.Dropout(0.25)
            self.dropout2 = torch.nn.Dropout(0.5)
            self.fc1 = torch.nn.Linear(9216, 128)
            self.fc2 = torch.nn.Linear(128, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = F.relu(x)
            x = self.conv2(x)
            x = F.relu(x)
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = torch.flatten(x, 1)
            x = self.fc1(x)
            x = F.relu(x)
            x = self.dropout2(x)
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)

    return Net()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=6000,
                        help="train on the first N training images (default: %(default)s)")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="evaluate on the first N test images (default: all)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs in PyTorch, then as many in fnlearn (default: 1)")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four IDX files (default: $FNLEARN_DATA_DIR)")
    parser.add_argument("--source", default="auto",
                        help="fnlearn.load_mnist's source (default: auto)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/port"),
                        help="folder for report.json (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("limit", "test_limit", "epochs"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def train_in_torch(torch, net, x, y, epochs: int, seed: int) -> None:
    """The example's ``train``: Adadelta lr 1.0, batch 64, shuffled, NLL loss."""
    optimizer = torch.optim.Adadelta(net.parameters(), lr=1.0)
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(BATCH_SIZE):
            optimizer.zero_grad()
            loss = torch.nn.functional.nll_loss(net(inputs[index]), labels[index])
            loss.backward()
            optimizer.step()


def torch_accuracy(torch, net, x, y) -> float:
    net.eval()
    with torch.no_grad():
        predicted = np.concatenate([net(torch.from_numpy(chunk)).argmax(dim=1).numpy()
                                    for chunk in np.array_split(x, max(1, len(x) //
                                                                       TEST_BATCH_SIZE))])
    return float(np.mean(predicted == y))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch = fl.parity.graphs.import_torch()
    torch.manual_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = data = fl.load_mnist(source=args.source,
                                                                data_dir=args.data_dir)
    x_train, y_train = x_train[:args.limit], y_train[:args.limit].astype(np.int64)
    x_test, y_test = x_test[:args.test_limit], y_test[:args.test_limit].astype(np.int64)
    # The example's ToTensor then Normalize, as fnlearn.models.torch_mnist_net does: NHWC.
    train_nhwc = ((x_train[..., None] / np.float32(255.0) - MEAN) / STD).astype(np.float32)
    test_nhwc = ((x_test[..., None] / np.float32(255.0) - MEAN) / STD).astype(np.float32)
    train_nchw = np.ascontiguousarray(train_nhwc.transpose(0, 3, 1, 2))
    test_nchw = np.ascontiguousarray(test_nhwc.transpose(0, 3, 1, 2))
    print(f"MNIST from {data.source}: {len(x_train)} train, {len(x_test)} test images")

    net = define_net(torch)
    started = time.perf_counter()
    train_in_torch(torch, net, train_nchw, y_train, args.epochs, args.seed)
    torch_seconds = time.perf_counter() - started
    torch_acc = torch_accuracy(torch, net, test_nchw, y_test)
    print(f"PyTorch, {args.epochs} epoch(s): test accuracy {torch_acc * 100:.2f}% "
          f"({torch_seconds:.0f}s)")

    imported = fl.parity.from_torch(net, (1, 28, 28))
    print(f"Imported: {imported.report}")
    print(fl.nn.summary(imported.model, (28, 28, 1)))
    evaluate = {"loss": "nll_loss", "metrics": ["accuracy"], "batch_size": TEST_BATCH_SIZE}
    imported_acc = fl.evaluate(imported.model, imported.params, test_nhwc, y_test,
                               model_state=imported.model_state, **evaluate)["accuracy"]
    print(f"Imported, before training on: test accuracy {imported_acc * 100:.2f}%")

    started = time.perf_counter()
    state, history = fl.fit(
        imported.model, train_nhwc, y_train, loss="nll_loss",
        optimizer=fl.optim.torch_adadelta(1.0), metrics=["accuracy"], epochs=args.epochs,
        batch_size=BATCH_SIZE, seed=args.seed, initial_params=imported.params,
        initial_model_state=imported.model_state or None, verbose=2)
    fnlearn_seconds = time.perf_counter() - started
    fnlearn_acc = fl.evaluate(imported.model, state.params, test_nhwc, y_test,
                              model_state=state.model_state, **evaluate)["accuracy"]
    print(f"fnlearn, {args.epochs} more epoch(s): test accuracy {fnlearn_acc * 100:.2f}% "
          f"({fnlearn_seconds:.0f}s)")

    results = {"source": data.source, "train_images": len(x_train), "test_images": len(x_test),
               "epochs": args.epochs, "torch_test_accuracy": torch_acc,
               "imported_test_accuracy": float(imported_acc),
               "fnlearn_test_accuracy": float(fnlearn_acc), "report": str(imported.report),
               "report_passed": imported.report.passed,
               "fnlearn_train_loss": [float(v) for v in history.history["loss"]]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"Results saved to {args.out / 'report.json'}")
    return results


if __name__ == "__main__":
    main()

"""Port PyTorch's ``mnist_rnn`` model to fnlearn mid-training: train in PyTorch, import, go on.

The model is the PyTorch examples' ``mnist_rnn/main.py`` ``Net`` (an LSTM over the 28
rows of each image, its last output, BatchNorm1d, two ``Dropout2d`` on features, two
Linear layers, log-softmax), written as the example writes it. It trains for an epoch
in PyTorch (Adadelta lr 0.1, batch 64) on the first ``--limit`` training images,
normalized as the example's transforms do. ``fnlearn.parity.from_torch`` imports it in
one call: the LSTM's ``(output, hidden)`` tuple and ``output[:, -1, :]`` become an
``LSTM(64, convention="torch")`` returning its last step, the ``Dropout2d`` layers on
``(N, C)`` inputs plain dropouts (what PyTorch 2.13 does there), BatchNorm's running
statistics come along. fnlearn trains it on with the same optimizer (its running
averages start afresh). The test accuracy is printed after each part.

    python experiments/port_rnn.py [--limit 6000] [--epochs 1] [--data-dir DIR]

Needs PyTorch (``pip install 'fnlearn[parity]'``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import warnings

import numpy as np

import fnlearn as fl

MEAN, STD = 0.1307, 0.3081
BATCH_SIZE, TEST_BATCH_SIZE, LR = 64, 1000, 0.1


def define_net(torch):
    """The PyTorch examples' ``mnist_rnn`` ``Net``, as the example writes it."""
    nn, F = torch.nn, torch.nn.functional

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
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/port_rnn"),
                        help="folder for report.json (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("limit", "test_limit", "epochs"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch = fl.parity.graphs.import_torch()
    torch.manual_seed(args.seed)
    warnings.filterwarnings("ignore", message="dropout2d: Received a 2-D input")
    (x_train, y_train), (x_test, y_test) = data = fl.load_mnist(source=args.source,
                                                                data_dir=args.data_dir)
    x_train, y_train = x_train[:args.limit], y_train[:args.limit].astype(np.int64)
    x_test, y_test = x_test[:args.test_limit], y_test[:args.test_limit].astype(np.int64)
    train = ((x_train[:, None] / np.float32(255.0) - MEAN) / STD).astype(np.float32)
    test = ((x_test[:, None] / np.float32(255.0) - MEAN) / STD).astype(np.float32)
    print(f"MNIST from {data.source}: {len(x_train)} train, {len(x_test)} test images")

    net = define_net(torch)
    optimizer = torch.optim.Adadelta(net.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(args.seed)
    inputs, labels = torch.from_numpy(train), torch.from_numpy(y_train)
    net.train()
    for _ in range(args.epochs):
        for index in torch.randperm(len(train), generator=generator).split(BATCH_SIZE):
            optimizer.zero_grad()
            torch.nn.functional.nll_loss(net(inputs[index]), labels[index]).backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        torch_acc = float(np.mean(np.concatenate([
            net(torch.from_numpy(chunk)).argmax(1).numpy()
            for chunk in np.array_split(test, max(1, len(test) // TEST_BATCH_SIZE))]) == y_test))
    print(f"PyTorch, {args.epochs} epoch(s): test accuracy {torch_acc * 100:.2f}%")

    # The PyTorch model takes (1, 28, 28) images; the import takes (28, 28, 1), the same
    # values for one channel.
    imported = fl.parity.from_torch(net, (1, 28, 28))
    print(f"Imported: {imported.report}")
    print(fl.nn.summary(imported.model, (28, 28, 1)))
    train, test = train.transpose(0, 2, 3, 1), test.transpose(0, 2, 3, 1)
    evaluate = {"loss": "nll_loss", "metrics": ["accuracy"], "batch_size": TEST_BATCH_SIZE}
    imported_acc = fl.evaluate(imported.model, imported.params, test, y_test,
                               model_state=imported.model_state, **evaluate)["accuracy"]
    print(f"Imported, before training on: test accuracy {imported_acc * 100:.2f}%")
    state, history = fl.fit(
        imported.model, train, y_train, loss="nll_loss", optimizer=fl.optim.torch_adadelta(LR),
        metrics=["accuracy"], epochs=args.epochs, batch_size=BATCH_SIZE, seed=args.seed,
        initial_params=imported.params, initial_model_state=imported.model_state, verbose=2)
    fnlearn_acc = fl.evaluate(imported.model, state.params, test, y_test,
                              model_state=state.model_state, **evaluate)["accuracy"]
    print(f"fnlearn, {args.epochs} more epoch(s): test accuracy {fnlearn_acc * 100:.2f}%")
    results = {"source": data.source, "train_images": len(x_train),
               "torch_test_accuracy": torch_acc, "imported_test_accuracy": float(imported_acc),
               "fnlearn_test_accuracy": float(fnlearn_acc), "report": str(imported.report),
               "report_passed": imported.report.passed,
               "layers": [layer.kind for layer in imported.model.children]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"Results saved to {args.out / 'report.json'}")
    return results


if __name__ == "__main__":
    main()

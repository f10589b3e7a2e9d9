"""The Fashion-MNIST residual network of ``experiments/resnet.py`` in plain PyTorch, same recipe.

The same network (module names as fnlearn's layer names: ``layer2.0.conv1``), the same
augmentation (a horizontal flip with probability 1/2 and a random crop after 2 pixels
of zero padding, per example), SGD with momentum 0.9 and weight decay 5e-4, the
learning rate warmed up over the first epoch then cosine-decayed per step
(``LambdaLR``), batch 128, ``CrossEntropyLoss``, tensors in memory, all cores.

    python experiments/contenders/torch_resnet.py --data-dir DIR [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import time

MEAN, STD = 72.94, 90.02


def build(torch, width: int = 16, blocks: int = 2):
    """The network: a 3x3 stem, three stages of BasicBlocks, global average pooling, a Linear.

    Args:
      torch: the ``torch`` module.
      width, blocks: the first stage's filters and the blocks per stage.

    Returns:
      A ``torch.nn.Module`` taking uint8 or float ``(N, 1, 28, 28)`` images, returning logits.
    """
    nn, F = torch.nn, torch.nn.functional

    class BasicBlock(nn.Module):
        def __init__(self, in_filters: int, filters: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(in_filters, filters, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(filters)
            self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(filters)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_filters != filters:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_filters, filters, 1, stride, bias=False),
                    nn.BatchNorm2d(filters))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            filters = width
            for stage in range(3):
                out = width * 2 ** stage
                layers = []
                for i in range(blocks):
                    layers.append(BasicBlock(filters, out, 2 if stage > 0 and i == 0 else 1))
                    filters = out
                setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            self.fc = nn.Linear(filters, 10)

        def forward(self, x):
            x = (x.float() - MEAN) / STD
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return ResNet()


def learning_rate(peak: float, warmup_steps: int, total_steps: int):
    """Step -> rate: linear from 0 to ``peak`` over ``warmup_steps``, then a cosine to 0."""

    def rate(step: int) -> float:
        if step < warmup_steps:
            return peak * step / warmup_steps
        done = min(step - warmup_steps, total_steps - warmup_steps)
        return 0.5 * peak * (1 + math.cos(math.pi * done / max(total_steps - warmup_steps, 1)))

    return rate


def augment(torch, images, generator, padding: int = 2):
    """A horizontal flip with probability 1/2, then a random crop after ``padding`` zeros."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in
                        enumerate(offsets.tolist())])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"), required=False)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="folder for results.json (default: out/torch_resnet)")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("--data-dir (the Fashion-MNIST IDX files) is required")
    import torch
    from mnist_idx import FILES, read_idx

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    arrays = {name: read_idx(os.path.join(args.data_dir, f)) for name, f in FILES.items()}
    x = torch.from_numpy(arrays["train_images"][:args.train_size].copy())[:, None]
    y = torch.from_numpy(arrays["train_labels"][:args.train_size].astype("int64"))
    xt = torch.from_numpy(arrays["test_images"].copy())[:, None]
    yt = torch.from_numpy(arrays["test_labels"].astype("int64"))
    model = build(torch, args.width, args.blocks)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                                weight_decay=5e-4)
    steps = math.ceil(len(x) / args.batch_size)
    rate = learning_rate(args.lr, steps, steps * args.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: rate(step) / args.lr)
    criterion = torch.nn.CrossEntropyLoss()
    started, history = time.perf_counter(), []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total, correct, seen = 0.0, 0, 0
        epoch_start = time.perf_counter()
        for i in range(0, len(x), args.batch_size):
            idx = order[i:i + args.batch_size]
            images = augment(torch, x[idx].float(), generator)
            logits = model(images)
            loss = criterion(logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            correct += (logits.argmax(1) == y[idx]).sum().item()
            seen += len(idx)
        history.append({"loss": total / seen, "accuracy": correct / seen})
        print(f"Epoch {epoch + 1}/{args.epochs} - {time.perf_counter() - epoch_start:.0f}s - "
              f"loss: {total / seen:.4f} - accuracy: {correct / seen:.4f}", flush=True)
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(xt[i:i + 1000]) for i in range(0, len(xt), 1000)])
    accuracy = (logits.argmax(1) == yt).float().mean().item()
    test_loss = criterion(logits, yt).item()
    print(f"Test loss: {test_loss:.4f}")
    print(f"Test accuracy: {accuracy * 100:.2f}%")
    print(f"Training took {seconds:.0f}s (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    result = {"test_accuracy": accuracy, "test_loss": test_loss, "seconds": seconds,
              "epochs": args.epochs, "history": history, "torch": torch.__version__}
    out = args.out or pathlib.Path("out/torch_resnet")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

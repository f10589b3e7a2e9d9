"""Fashion-MNIST with a small residual network: BatchNorm, augmentation, SGD with a cosine schedule.

The network is the CIFAR ResNet of He et al. (2016) sized for 28x28 images: a 3x3
stem, three stages of ``--blocks`` BasicBlocks (3x3 conv, BatchNorm, ReLU, 3x3 conv,
BatchNorm, plus the shortcut, then ReLU) at ``--width``, 2x and 4x that many filters,
the second and third stage starting with stride 2 (28 -> 14 -> 7, a 1x1 convolution
with BatchNorm on the shortcut), then global average pooling and a Dense layer.
Layers are named as the PyTorch version's modules (``layer2.0.conv1``), so its
weights pair with these by name (``experiments/contenders/torch_resnet.py``).

Recipe: uint8 images normalized inside the model, training-only augmentation (a
horizontal ``RandomFlip`` and a ``RandomCrop`` with 2 pixels of padding), SGD with
momentum 0.9 and weight decay 5e-4 (PyTorch's ``SGD(weight_decay=)``), the learning
rate warmed up linearly over the first epoch to ``--lr`` then cosine-decayed to zero
per step, batch 128, cross-entropy on logits. The test set is evaluated after the last
epoch.

    python experiments/resnet.py [--epochs N] [--batch-size N] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import numpy as np
import optax

import fnlearn as fl
from fnlearn import nn

# Fashion-MNIST training-set pixel mean and standard deviation (of uint8 values).
MEAN, STD = 72.94, 90.02


def basic_block(in_filters: int, filters: int, stride: int, name: str) -> nn.Layer:
    """A BasicBlock as an ``nn.Model`` named ``name``: two 3x3 convolutions and a shortcut."""
    x = nn.Input()
    h = nn.Conv2D(filters, 3, stride, 1, use_bias=False, init="torch", name="conv1")(x)
    h = nn.ReLU()(nn.BatchNorm(convention="torch", name="bn1")(h))
    h = nn.Conv2D(filters, 3, 1, 1, use_bias=False, init="torch", name="conv2")(h)
    h = nn.BatchNorm(convention="torch", name="bn2")(h)
    skip = x
    if stride != 1 or in_filters != filters:
        skip = nn.Conv2D(filters, 1, stride, use_bias=False, init="torch",
                         name="shortcut.0")(x)
        skip = nn.BatchNorm(convention="torch", name="shortcut.1")(skip)
    return nn.Model(x, nn.ReLU()(nn.Add()([h, skip])), name=name)


def build_model(width: int = 16, blocks: int = 2, augment: bool = True) -> nn.Layer:
    """The residual network on uint8 ``(28, 28, 1)`` images, returning logits.

    Args:
      width: filters of the first stage (the next two have 2x and 4x).
      blocks: BasicBlocks per stage.
      augment: put the training-only RandomFlip and RandomCrop in front.
    """
    image = nn.Input((28, 28, 1), name="image")
    h = nn.Normalize(MEAN, STD)(image)
    if augment:
        h = nn.RandomCrop(2)(nn.RandomFlip("horizontal")(h))
    h = nn.Conv2D(width, 3, 1, 1, use_bias=False, init="torch", name="conv1")(h)
    h = nn.ReLU()(nn.BatchNorm(convention="torch", name="bn1")(h))
    filters = width
    for stage in range(3):
        out = width * 2 ** stage
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            h = basic_block(filters, out, stride, f"layer{stage + 1}.{i}")(h)
            filters = out
    h = nn.GlobalAveragePooling2D()(h)
    return nn.Model(image, nn.Dense(10, init="torch", name="fc")(h))


def crossentropy(labels, logits):
    """Cross-entropy of integer labels and logits (PyTorch's ``CrossEntropyLoss``)."""
    return fl.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def learning_rate(peak: float, warmup_steps: int, total_steps: int):
    """Step -> learning rate: linear from 0 to ``peak`` over ``warmup_steps``, then a cosine
    to 0 at ``total_steps`` (a plain Python function, the same in both frameworks)."""

    def rate(step: int) -> float:
        if step < warmup_steps:
            return peak * step / warmup_steps
        done = min(step - warmup_steps, total_steps - warmup_steps)
        return 0.5 * peak * (1 + math.cos(math.pi * done / max(total_steps - warmup_steps, 1)))

    return rate


def optimizer(peak: float, warmup_steps: int, total_steps: int, momentum: float = 0.9,
              weight_decay: float = 5e-4) -> optax.GradientTransformation:
    """PyTorch's ``SGD(lr, momentum, weight_decay)`` stepped by ``learning_rate`` per step."""
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps),
         optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1))],
        [warmup_steps])
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=momentum))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="first stage's filters")
    parser.add_argument("--blocks", type=int, default=2, help="BasicBlocks per stage")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    parser.add_argument("--train-size", type=int, default=None,
                        help="train on the first N training images only (default: all)")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="folder of the four Fashion-MNIST IDX files (default: "
                             "$FNLEARN_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="folder for results.json and the plots (default: out/resnet)")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "width", "blocks", "train_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    (x_train, y_train), (x_test, y_test) = data = fl.load_fashion_mnist(data_dir=args.data_dir)
    x_train, y_train = x_train[:args.train_size, ..., None], y_train[:args.train_size]
    x_test = x_test[..., None]
    print(f"Fashion-MNIST from {data.source}: {len(x_train)} train, {len(x_test)} test images")
    model = build_model(args.width, args.blocks)
    print(nn.summary(model, x_train.shape[1:]))
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    started = time.perf_counter()
    state, history = fl.fit(
        model, x_train, y_train.astype(np.int32),
        loss=crossentropy,
        optimizer=optimizer(args.lr, steps_per_epoch, total), metrics=["accuracy"],
        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, verbose=args.verbose)
    fit_seconds = time.perf_counter() - started
    results = fl.evaluate(model, state.params, x_test, y_test.astype(np.int32),
                          loss=crossentropy,
                          metrics=["accuracy"], model_state=state.model_state)
    print(f"Test loss: {results['loss']:.4f}")
    print(f"Test accuracy: {results['accuracy'] * 100:.2f}%")
    print(f"Training took {fit_seconds:.0f}s")
    out = args.out or pathlib.Path("out/resnet")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"test_accuracy": results["accuracy"], "test_loss": results["loss"],
               "seconds": fit_seconds, "epochs": args.epochs, "batch_size": args.batch_size,
               "width": args.width, "blocks": args.blocks, "lr": args.lr, "seed": args.seed,
               "train_size": len(x_train), "history": history.history}
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=float))
    if not args.no_plots:
        predicted = np.argmax(fl.predict(model, state.params, x_test,
                                         model_state=state.model_state), axis=-1)
        matrix = fl.plots.confusion_matrix(y_test, predicted, 10)
        plots = [fl.plots.plot_history(history, out / "training_curves.png"),
                 fl.plots.plot_confusion_matrix(matrix, out / "confusion_matrix.png")]
        print("Plots saved to " + ", ".join(str(plot.path) for plot in plots))
    return {**summary, "state": state, "history": history, "source": data.source}


if __name__ == "__main__":
    main()

"""TensorFlow's DCGAN tutorial in fnlearn (``experiments/dcgan.py``), timed for the benchmark.

Runs ``experiments/dcgan.py`` as it is (the per-epoch 4x4 grid saved, as the tutorial
saves its own), without the Fréchet score and with only the 16 samples it draws anyway,
then prints ``BENCH_RESULT {json}`` with every epoch's seconds.

    python experiments/contenders/fnlearn_dcgan.py --data-dir DIR [--epochs 3]
                                                   [--train-size N] [--out DIR]
"""

import argparse
import os

from mnist_idx import missing, report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--source", choices=("idx", "sample"), default="idx")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/fnlearn_dcgan")
    args = parser.parse_args(argv)
    try:
        import jax

        import fnlearn as fl
        from experiments import dcgan
    except ImportError:
        missing("fnlearn")
    argv = ["--epochs", str(args.epochs), "--seed", str(args.seed), "--out", args.out,
            "--source", args.source, "--no-score", "--samples", "16"]
    argv += ["--data-dir", args.data_dir] if args.data_dir else []
    argv += ["--train-size", str(args.train_size)] if args.train_size else []
    result = dcgan.main(argv)
    report(epoch_seconds=list(result["history"].epoch_seconds), seconds=result["seconds"],
           framework_version=f"fnlearn {fl.__version__}, jax {jax.__version__}")


if __name__ == "__main__":
    main()

"""Serve predictions from an exported model: ``python -m fnlearn.serve MODEL INPUT.npy``.

Loads a file written by ``fnlearn.export.export_model``, runs it on the inputs in
a ``.npy`` file (any batch size), prints the predicted class (argmax) of each
example, and with ``--out`` saves the full outputs. Needs no model code.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 success, 1 bad model or input)."""
    parser = argparse.ArgumentParser(prog="python -m fnlearn.serve", description=__doc__.split(
        "\n")[0])
    parser.add_argument("model", help="file written by fnlearn.export.export_model")
    parser.add_argument("inputs", help=".npy file with a batch of inputs")
    parser.add_argument("--out", help="save the model outputs to this .npy file")
    args = parser.parse_args(argv)

    from fnlearn.export import load_exported

    try:
        predict = load_exported(args.model)
        try:
            # Pickled (object) arrays would run code on load: refused.
            inputs = np.load(args.inputs, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read inputs from {args.inputs}: {error}") from error
        outputs = predict(inputs)
    except (OSError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.out:
        np.save(args.out, outputs)
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        print("argmax:", " ".join(map(str, np.argmax(outputs, axis=1))))
    else:
        print("outputs:", np.array2string(outputs, threshold=50))
    return 0


if __name__ == "__main__":
    sys.exit(main())

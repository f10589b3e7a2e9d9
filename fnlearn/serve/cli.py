"""``python -m fnlearn.serve``: serve an exported model over HTTP, or predict from a file.

Server (one path)::

    python -m fnlearn.serve MODEL [--name mnist] [--host 127.0.0.1] [--port 8501]

File mode (a model and an input file; the word ``predict`` is optional)::

    python -m fnlearn.serve [predict] MODEL INPUT.npy [--out OUTPUTS.npy]

File mode prints the predicted class (argmax) of each example, and with ``--out``
saves the full outputs. Neither mode needs the model's code.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from fnlearn.serve.batching import BatchPolicy


def predict_file(model: str, inputs: str, out: str | None = None) -> int:
    """Predicts the examples of a ``.npy`` file; returns the exit status (1: bad model or input).

    Args:
      model: a file written by ``fnlearn.export.export_model``.
      inputs: a ``.npy`` file with a batch of inputs (pickled arrays are refused).
      out: save the model outputs to this ``.npy`` file.
    """
    from fnlearn.export import load_exported

    try:
        predict = load_exported(model)
        try:
            # Pickled (object) arrays would run code on load: refused.
            x = np.load(inputs, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read inputs from {inputs}: {error}") from error
        outputs = predict(x)
    except (OSError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if out:
        np.save(out, outputs)
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        print("argmax:", " ".join(map(str, np.argmax(outputs, axis=1))))
    else:
        print("outputs:", np.array2string(outputs, threshold=50))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnlearn.serve", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s MODEL [--name NAME] [--host HOST] [--port PORT] [options]\n"
              "       %(prog)s [predict] MODEL INPUT.npy [--out OUT]",
        description=__doc__.split("\n\n")[-1])
    parser.add_argument("paths", nargs="+", metavar="MODEL [INPUT.npy]",
                        help="the export; with an input file, predict it and exit")
    file_mode = parser.add_argument_group("file mode")
    file_mode.add_argument("--out", help="save the model outputs to this .npy file")
    server = parser.add_argument_group("server")
    server.add_argument("--name", help="the model's name in URLs (default: file name stem)")
    server.add_argument("--version", type=int, default=1, help="its version number (1)")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to bind (127.0.0.1: this machine only)")
    server.add_argument("--port", type=int, default=8501, help="TCP port (8501)")
    server.add_argument("--no-batching", action="store_true",
                        help="run each request on its own instead of merging them")
    server.add_argument("--max-batch-size", type=int, default=128,
                        help="most rows merged into one call (128)")
    server.add_argument("--batch-timeout-ms", type=float, default=1.0,
                        help="how long a request waits for others to join its batch (1.0)")
    server.add_argument("--batch-sizes",
                        help="comma-separated padded call sizes (default: 32, 64, ... up to "
                             "--max-batch-size)")
    server.add_argument("--max-queued", type=int, default=1024,
                        help="requests waiting beyond this get 503 (1024)")
    server.add_argument("--max-body-bytes", type=int, default=16 * 2**20,
                        help="larger request bodies get 413 (16 MiB)")
    server.add_argument("--request-timeout", type=float, default=30.0,
                        help="seconds before a predict request gets 408/504 (30)")
    server.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds to finish requests in flight after SIGTERM (30)")
    server.add_argument("--access-log", action="store_true", help="log every request")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 success, 1 bad model/input, 2 usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    paths = args.paths[1:] if args.paths[0] == "predict" and len(args.paths) == 3 else args.paths
    if len(paths) == 2:
        return predict_file(*paths, out=args.out)
    if len(paths) > 2 or args.paths[0] == "predict":
        parser.error("give MODEL to serve it, or [predict] MODEL INPUT.npy to predict a file")
    if args.out:
        parser.error("--out is for file mode: python -m fnlearn.serve MODEL INPUT.npy --out F")
    try:
        sizes = tuple(int(s) for s in args.batch_sizes.split(",")) if args.batch_sizes else ()
        policy = BatchPolicy(enabled=not args.no_batching, max_batch_size=args.max_batch_size,
                             timeout_s=args.batch_timeout_ms / 1000, batch_sizes=sizes,
                             max_queued=args.max_queued)
    except ValueError as error:
        parser.error(str(error))
    try:
        from fnlearn.serve.http import serve
    except ImportError as error:
        print(f"error: the server needs Starlette and uvicorn ({error}); "
              "pip install 'fnlearn[serve]'", file=sys.stderr)
        return 1
    try:
        serve(paths[0], host=args.host, port=args.port, graceful_timeout_s=args.graceful_timeout,
              access_log=args.access_log, name=args.name, version=args.version, policy=policy,
              max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0

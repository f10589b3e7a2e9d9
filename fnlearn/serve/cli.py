"""``python -m fnlearn.serve``: serve exported models (REST and gRPC), or predict from a file.

Server, with TensorFlow Serving's flag names::

    python -m fnlearn.serve --model_base_path DIR --model_name NAME [--rest_api_port 8501]
                            [--port 8500] [--file_system_poll_wait_seconds 1]
    python -m fnlearn.serve --model_config_file models.config
    python -m fnlearn.serve MODEL        # one export file, or a base path

File mode (a model and an input file; the word ``predict`` is optional)::

    python -m fnlearn.serve [predict] MODEL INPUT.npy [--out OUTPUTS.npy]

File mode prints the predicted class (argmax) of each example, and with ``--out``
saves the full outputs. A model with named inputs takes an ``.npz`` file holding one
array per input name, and one with named outputs saves them to an ``.npz`` by name.
Neither mode needs the model's code.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

from fnlearn.serve.batching import BatchPolicy
from fnlearn.serve.config import ModelSpec, parse_labels, parse_policy, read_model_config_file


def predict_file(model: str, inputs: str, out: str | None = None) -> int:
    """Predicts the examples of a ``.npy`` file; returns the exit status (1: bad model or input).

    Args:
      model: a file written by ``fnlearn.export.export_model``.
      inputs: a ``.npy`` file with a batch of inputs (pickled arrays are refused), or an
        ``.npz`` file with one per input name for a model with several.
      out: save the model outputs to this ``.npy`` file (``.npz``, by name, for several).
    """
    from fnlearn.export import load_exported

    try:
        predict = load_exported(model)
        try:
            # Pickled (object) arrays would run code on load: refused.
            x = np.load(inputs, allow_pickle=False)
            if isinstance(x, np.lib.npyio.NpzFile):
                with x:
                    x = {name: x[name] for name in x.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read inputs from {inputs}: {error}") from error
        signature = predict.signature
        if isinstance(x, dict) and signature.input_structure == "tuple":
            x = tuple(x.get(name) for name in signature.input_names)
            if any(value is None for value in x):
                raise ValueError(f"{inputs} must hold the inputs {list(signature.input_names)}")
        outputs = predict(x)
    except (OSError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    named = (dict(zip(signature.output_names, outputs)) if isinstance(outputs, tuple)
             else outputs if isinstance(outputs, dict) else {"": outputs})
    if out and "" in named:
        np.save(out, outputs)
    elif out:
        np.savez(out, **named)
    for name, value in named.items():
        label = f"{name} " if name else ""
        if value.ndim == 2 and value.shape[1] > 1:
            print(f"{label}argmax:", " ".join(map(str, np.argmax(value, axis=1))))
        else:
            print(f"{label}outputs:", np.array2string(value, threshold=50))
    return 0


def _flag(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnlearn.serve", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --model_base_path DIR [--model_name NAME] [options]\n"
              "       %(prog)s --model_config_file FILE [options]\n"
              "       %(prog)s MODEL [options]\n"
              "       %(prog)s [predict] MODEL INPUT.npy [--out OUT]",
        description=__doc__.split("\n\n")[-1])
    parser.add_argument("paths", nargs="*", metavar="MODEL [INPUT.npy]",
                        help="an export file or base path; with an input file, predict it")
    file_mode = parser.add_argument_group("file mode")
    file_mode.add_argument("--out", help="save the model outputs to this .npy file (.npz for "
                                                "named outputs)")
    models = parser.add_argument_group("models (TensorFlow Serving's flags)")
    models.add_argument("--model_base_path", help="folder of numbered version folders")
    models.add_argument("--model_name", "--name", dest="name",
                        help="the model's name in URLs (default: folder or file name)")
    models.add_argument("--model_config_file", help="TF Serving model config (text format)")
    models.add_argument("--model_version_policy", default="latest",
                        help="latest, latest:N, all or specific:V1,V2 (latest)")
    models.add_argument("--version_labels", help="labels, e.g. stable=1,canary=2")
    models.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="seconds between scans for new versions; 0: once (1)")
    models.add_argument("--version", type=int, default=1,
                        help="the version number of a MODEL file (1)")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to bind (127.0.0.1: this machine only)")
    server.add_argument("--rest_api_port", type=int, default=8501, help="REST port (8501)")
    server.add_argument("--port", type=int, default=None,
                        help="gRPC port (8500); 0: no gRPC")
    server.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the ports (1)")
    server.add_argument("--enable_batching", type=_flag, nargs="?", const=True, default=True,
                        help="merge concurrent requests (true); --enable_batching=false: "
                             "each request on its own")
    server.add_argument("--no-batching", dest="enable_batching", action="store_false",
                        help="same as --enable_batching=false")
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
    server.add_argument("--header-timeout", type=float, default=10.0,
                        help="seconds a connection has to send its request headers (10)")
    server.add_argument("--max-connections", type=int, default=512,
                        help="open connections per worker beyond which new ones get 503 (512)")
    server.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds to finish requests in flight after SIGTERM (30)")
    server.add_argument("--access-log", action="store_true", help="log every request")
    return parser


def _specs(args, parser) -> list[ModelSpec]:
    given = [bool(args.paths), bool(args.model_base_path), bool(args.model_config_file)]
    if sum(given) != 1:
        parser.error("give one of MODEL, --model_base_path DIR or --model_config_file FILE")
    if args.model_config_file:
        return read_model_config_file(args.model_config_file)
    policy, labels = parse_policy(args.model_version_policy), parse_labels(args.version_labels)
    path = Path(args.model_base_path or args.paths[0])
    if args.model_base_path or path.is_dir():
        return [ModelSpec(args.name or path.resolve().name, base_path=path, policy=policy,
                          labels=labels)]
    return [ModelSpec(args.name or path.stem, file=path, version=args.version, labels=labels)]


# tensorflow-serving-api requires the `tensorflow` distribution; with tensorflow-cpu
# (or tensorflow) already installed, --no-deps keeps TensorFlow from installing twice.
GRPC_INSTALL = ("pip install 'fnlearn[serve]' tensorflow-cpu==2.21.0 && pip install --no-deps "
                "tensorflow-serving-api==2.21.0")


def _grpc_port(args, parser) -> int:
    if args.port == args.rest_api_port:
        parser.error(f"--port {args.port} is the gRPC port (TensorFlow Serving's name) and "
                     f"--rest_api_port is {args.rest_api_port}: give them different ports")
    if args.port == 0:
        return 0
    missing = [m for m in ("grpc", "tensorflow_serving") if importlib.util.find_spec(m) is None]
    if missing and args.port is not None:
        parser.error(f"gRPC needs grpcio and tensorflow-serving-api (missing: {missing}); "
                     f"{GRPC_INSTALL}, or --port 0")
    if missing:
        print(f"warning: no gRPC: {', '.join(missing)} missing; {GRPC_INSTALL}",
              file=sys.stderr)
        return 0
    return 8500 if args.port is None else args.port


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 success, 1 bad model/input, 2 usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    paths = args.paths[1:] if args.paths[:1] == ["predict"] and len(args.paths) == 3 else args.paths
    if len(paths) == 2:
        return predict_file(*paths, out=args.out)
    if len(paths) > 2 or args.paths[:1] == ["predict"]:
        parser.error("give MODEL to serve it, or [predict] MODEL INPUT.npy to predict a file")
    if args.out:
        parser.error("--out is for file mode: python -m fnlearn.serve MODEL INPUT.npy --out F")
    if args.workers < 1 or args.max_connections < 1 or not args.header_timeout > 0:
        parser.error("--workers and --max-connections must be >= 1, --header-timeout > 0")
    try:
        sizes = tuple(int(s) for s in args.batch_sizes.split(",")) if args.batch_sizes else ()
        policy = BatchPolicy(enabled=args.enable_batching, max_batch_size=args.max_batch_size,
                             timeout_s=args.batch_timeout_ms / 1000, batch_sizes=sizes,
                             max_queued=args.max_queued)
        specs = _specs(args, parser)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    if args.file_system_poll_wait_seconds < 0:
        parser.error("--file_system_poll_wait_seconds must be >= 0")
    grpc_port = _grpc_port(args, parser)
    try:
        from fnlearn.serve.server import serve
    except ImportError as error:
        print(f"error: the server needs Starlette, uvicorn and prometheus-client ({error}); "
              "pip install 'fnlearn[serve]'", file=sys.stderr)
        return 1
    app_options = {"models": specs, "policy": policy, "max_body_bytes": args.max_body_bytes,
                   "request_timeout_s": args.request_timeout,
                   "poll_s": args.file_system_poll_wait_seconds, "grpc_port": grpc_port,
                   "grpc_host": args.host}
    try:
        return serve(app_options, host=args.host, port=args.rest_api_port, workers=args.workers,
                     header_timeout_s=args.header_timeout, max_connections=args.max_connections,
                     graceful_timeout_s=args.graceful_timeout, access_log=args.access_log)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

"""Load test of ``python -m fnlearn.serve``: concurrent clients over REST and gRPC, batching
on and off, one worker process or several.

Exports the article's MNIST MLP (or a wider one with ``--hidden``/``--layers``;
initialized weights: the cost of a prediction does not depend on their values) and
starts the server as a subprocess on 127.0.0.1 for each setting: 1 and ``--workers``
processes, each with dynamic batching and without. For each number of clients it keeps
that many clients busy with one-image predict requests: keep-alive HTTP connections
(row format) and gRPC calls (``tensorflow-serving-api`` stubs on one channel). Without
batching the server calls the model on exactly one row per request
(``--batch-sizes 1,2,4,...``), its fastest setting. Every answer is checked bit for bit
against ``fnlearn.predict`` (batches of 32 rows, or of one row without batching). Each
level stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes
first; the servers run side by side and take turns, level by level, ``--repeats`` times.

    python experiments/serve_benchmark.py [--clients 1,8,32,128] [--workers 2]
                                          [--protocols rest,grpc] [--requests 20000]
                                          [--seconds 6] [--repeats 1] [--hidden 128] [--layers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import fnlearn as fl

ROOT = Path(__file__).resolve().parents[1]
PATH = "/v1/models/mnist:predict"


def start_server(model: Path, port: int, grpc_port: int, *options: str,
                 workers: int = 1) -> subprocess.Popen:
    """Starts the server and returns once every worker has loaded the model (at most 180 s)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "fnlearn.serve", str(model), "--name",
                                "mnist", "--rest_api_port", str(port), "--port", str(grpc_port),
                                "--workers", str(workers), *options], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server {options} exited with status {process.returncode}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/monitoring/prometheus/metrics")
            text = connection.getresponse().read().decode()
            loads = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("fnlearn_serve_version_loads_total{"))
            if loads >= workers:
                return process
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not start within 180 s")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM, then wait for the graceful exit."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


async def _client(port: int, requests: list[bytes], expected: np.ndarray, offset: int,
                  budget: list[int], stop_at: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while budget[0] > 0 and time.perf_counter() < stop_at:
            budget[0] -= 1
            k = i % len(requests)
            i += 1
            start = time.perf_counter()
            writer.write(requests[k])
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            answer = np.asarray(json.loads(body).get("predictions"), np.float32)
            if b" 200 " not in status or not np.array_equal(answer, expected[k:k + 1]):
                raise AssertionError(f"wrong answer to request {k}: {status!r} {body[:200]!r}")
    finally:
        writer.close()
        await writer.wait_closed()


async def _grpc_client(stub, requests: list, expected: np.ndarray, offset: int,
                       budget: list[int], stop_at: float, latencies: list[float]) -> None:
    i = offset
    while budget[0] > 0 and time.perf_counter() < stop_at:
        budget[0] -= 1
        k = i % len(requests)
        i += 1
        start = time.perf_counter()
        response = await stub.Predict(requests[k], timeout=60)
        latencies.append(time.perf_counter() - start)
        answer = np.asarray(response.outputs["outputs"].float_val, np.float32)
        if not np.array_equal(answer, expected[k]):
            raise AssertionError(f"wrong gRPC answer to request {k}")


async def load(protocol: str, port: int, clients: int, requests: list,
               expected: np.ndarray, max_requests: int, max_seconds: float) -> dict:
    """Runs ``clients`` concurrent clients; returns requests/s and latency percentiles (ms)."""
    latencies: list[float] = []
    budget = [max_requests]
    start = time.perf_counter()
    if protocol == "rest":
        await asyncio.gather(*(_client(port, requests, expected, c * 7, budget,
                                       start + max_seconds, latencies) for c in range(clients)))
    else:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            await asyncio.gather(*(_grpc_client(stub, requests, expected, c * 7, budget,
                                                start + max_seconds, latencies)
                                   for c in range(clients)))
    elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return {"clients": clients, "requests": len(latencies),
            "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def model_call_ms(path: Path, sizes: tuple[int, ...] = (1, 32, 128),
                  repeats: int = 50) -> dict[int, float]:
    """Median milliseconds of one call of the exported function alone, per batch size."""
    call = jax.jit(fl.export.load_exported(path).exported.call)
    times = {}
    for size in sizes:
        x = np.zeros((size, 28, 28), np.uint8)
        np.asarray(call(x))
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            np.asarray(call(x))
            samples.append((time.perf_counter() - start) * 1e3)
        times[size] = statistics.median(samples)
    return times


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grpc_requests(images: np.ndarray) -> list:
    from tensorflow_serving.apis import predict_pb2

    from fnlearn.serve.grpc import array_to_tensor

    requests = []
    for image in images:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mnist"
        request.inputs["inputs"].CopyFrom(array_to_tensor(image[None]))
        requests.append(request)
    return requests


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,32,128",
                        help="comma-separated numbers of concurrent clients (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes compared with one (default: the cores, "
                             "%(default)s); 1: one setting only")
    parser.add_argument("--protocols", default="rest,grpc",
                        help="rest, grpc or both (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=20000,
                        help="most requests per level (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="most seconds per level (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of every level; the table shows their medians (default: 1)")
    parser.add_argument("--max-batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128,
                        help="units of each hidden layer (default: %(default)s, the article's)")
    parser.add_argument("--layers", type=int, default=1,
                        help="hidden layers (default: %(default)s, the article's)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    protocols = args.protocols.split(",")
    if not set(protocols) <= {"rest", "grpc"}:
        parser.error(f"--protocols: rest, grpc or both, got {args.protocols!r}")

    # The article's model for --hidden 128 --layers 1 (dropout is off at inference).
    hidden = [layer for _ in range(args.layers)
              for layer in (fl.nn.Dense(args.hidden, "relu"), fl.nn.Dropout(0.2))]
    model = fl.nn.serial(fl.nn.Normalize(0.0, 255.0), fl.nn.Flatten(), *hidden,
                         fl.nn.Dense(10, "softmax"))
    params = fl.nn.init(model, 0, (28, 28))
    (_, _), (images, _) = fl.data.load_mnist(source="sample")
    images = images[:256]
    expected = {"on": fl.predict(model, params, images, batch_size=32),
                "off": np.concatenate([fl.predict(model, params, image[None], batch_size=1)
                                       for image in images])}
    single_sizes = ",".join(str(2**k) for k in range(args.max_batch_size.bit_length())
                            if 2**k < args.max_batch_size) + f",{args.max_batch_size}"
    requests = {"rest": [(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                          ).encode() + body
                         for body in (json.dumps({"instances": [image.tolist()]}).encode()
                                      for image in images)]}
    if "grpc" in protocols:
        requests["grpc"] = _grpc_requests(images)
    settings = [(w, b) for w in sorted({1, args.workers}) for b in ("on", "off")]
    runs = []
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as servers:
        path = fl.export.export_model(model, params, (28, 28), np.uint8, Path(folder) / "m.fnx",
                                      platforms=("cpu",))
        alone = model_call_ms(path)
        print("one call of the model alone, by batch size: " + ", ".join(
            f"{size}: {ms:.3f} ms" for size, ms in alone.items()), flush=True)
        ports = {}
        for workers, batching in settings:
            extra = [] if batching == "on" else ["--no-batching", "--batch-sizes", single_sizes]
            ports[workers, batching] = {"rest": _free_port(), "grpc": _free_port()}
            server = start_server(path, ports[workers, batching]["rest"],
                                  ports[workers, batching]["grpc"], "--max-batch-size",
                                  str(args.max_batch_size), *extra, workers=workers)
            servers.callback(stop_server, server)
            for protocol in protocols:  # warm-up
                asyncio.run(load(protocol, ports[workers, batching][protocol], 4,
                                 requests[protocol], expected[batching], 100, 30.0))
        # The settings take turns level by level, so a change in the machine's load hits all.
        for _ in range(args.repeats):
            for protocol in protocols:
                for clients in levels:
                    for workers, batching in settings:
                        run = asyncio.run(load(protocol, ports[workers, batching][protocol],
                                               clients, requests[protocol], expected[batching],
                                               args.requests, args.seconds))
                        runs.append({"protocol": protocol, "workers": workers,
                                     "batching": batching, **run})
                        print(f"{protocol:>4}  workers {workers}  batching {batching:>3}  "
                              f"clients {clients:>4}  {run['requests']:>6} requests  "
                              f"{run['requests_per_s']:8.0f} req/s  p50 {run['p50_ms']:7.2f} ms"
                              f"  p99 {run['p99_ms']:7.2f} ms", flush=True)
    keys = [(p, w, b, c) for p in protocols for w, b in settings for c in levels]
    rows = []
    for protocol, workers, batching, clients in keys:
        same = [r for r in runs if (r["protocol"], r["workers"], r["batching"], r["clients"])
                == (protocol, workers, batching, clients)]
        rows.append({"protocol": protocol, "workers": workers, "batching": batching,
                     "clients": clients, "requests": sum(r["requests"] for r in same),
                     **{key: statistics.median(r[key] for r in same)
                        for key in ("requests_per_s", "p50_ms", "p99_ms")}})
    names = [f"{w} worker{'s' if w > 1 else ''}, batching {b}" for w, b in settings]
    print(f"\nmedians of {args.repeats} run(s) per level; each cell: requests/s, p50 ms, p99 ms"
          f"\n| protocol | clients | " + " | ".join(names) + " |\n"
          + "| --- " * (2 + len(settings)) + "|")
    for protocol in protocols:
        for clients in levels:
            cells = [next(r for r in rows if (r["protocol"], r["workers"], r["batching"],
                                               r["clients"]) == (protocol, w, b, clients))
                     for w, b in settings]
            print(f"| {protocol} | {clients} | " + " | ".join(
                f"{c['requests_per_s']:.0f}, {c['p50_ms']:.2f}, {c['p99_ms']:.2f}"
                for c in cells) + " |")
    return rows


if __name__ == "__main__":
    main()

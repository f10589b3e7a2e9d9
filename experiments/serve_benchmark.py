"""Load test of ``python -m fnlearn.serve``: concurrent clients over real HTTP, batching on and off.

Exports the article's MNIST MLP (or a wider one with ``--hidden``/``--layers``;
initialized weights: the cost of a prediction does not depend on their values),
starts the server as a subprocess on 127.0.0.1 once with dynamic batching and once
without, and for each number of clients keeps that many keep-alive connections
busy with one-image predict requests (row format). Without batching the server
calls the model on exactly one row per request (``--batch-sizes 1,2,4,...``), its
fastest setting. Every answer is checked bit for bit against ``fnlearn.predict``
(batches of 32 rows, or of one row without batching). Each level stops after
``--requests`` requests or ``--seconds`` seconds, whichever comes first; both
servers run side by side and take turns, level by level, ``--repeats`` times.

    python experiments/serve_benchmark.py [--clients 1,8,32,128] [--requests 20000] [--seconds 6]
                                          [--repeats 1] [--hidden 128] [--layers 1]
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


def start_server(model: Path, port: int, *options: str) -> subprocess.Popen:
    """Starts the server on ``port`` and returns once it answers (at most 120 s)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "fnlearn.serve", str(model), "--name",
                                "mnist", "--port", str(port), *options], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read()[-2000:]}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/v1/models/mnist")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.2)
        finally:
            connection.close()
    process.kill()
    raise RuntimeError("the server did not start within 120 s")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM, then wait for the graceful exit."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    process.stderr.close()


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


async def load(port: int, clients: int, requests: list[bytes], expected: np.ndarray,
               max_requests: int, max_seconds: float) -> dict:
    """Runs ``clients`` concurrent clients; returns requests/s and latency percentiles (ms)."""
    latencies: list[float] = []
    budget = [max_requests]
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, requests, expected, c * 7, budget, start + max_seconds,
                                   latencies) for c in range(clients)))
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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,32,128",
                        help="comma-separated numbers of concurrent clients (default: %(default)s)")
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

    # The article's model for --hidden 128 --layers 1 (dropout is off at inference).
    hidden = [layer for _ in range(args.layers)
              for layer in (fl.nn.Dense(args.hidden, "relu"), fl.nn.Dropout(0.2))]
    model = fl.nn.serial(fl.nn.Normalize(0.0, 255.0), fl.nn.Flatten(), *hidden,
                         fl.nn.Dense(10, "softmax"))
    params = fl.nn.init(model, 0, (28, 28))
    (_, _), (images, _) = fl.data.load_mnist(source="sample")
    images = images[:256]
    expected = {"on": fl.predict(model, params, images, batch_size=32),
                "off": np.concatenate([fl.predict(model, params, image[None])
                                       for image in images])}
    single_sizes = ",".join(str(2**k) for k in range(args.max_batch_size.bit_length())
                            if 2**k < args.max_batch_size) + f",{args.max_batch_size}"
    requests = [(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                for body in (json.dumps({"instances": [image.tolist()]}).encode()
                             for image in images)]
    runs = []
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as servers:
        path = fl.export.export_model(model, params, (28, 28), np.uint8, Path(folder) / "m.fnx",
                                      platforms=("cpu",))
        alone = model_call_ms(path)
        print("one call of the model alone, by batch size: " + ", ".join(
            f"{size}: {ms:.3f} ms" for size, ms in alone.items()), flush=True)
        ports = {"on": _free_port(), "off": _free_port()}
        for mode, extra in (("on", []), ("off", ["--no-batching", "--batch-sizes", single_sizes])):
            server = start_server(path, ports[mode], "--max-batch-size",
                                  str(args.max_batch_size), *extra)
            servers.callback(stop_server, server)
            asyncio.run(load(ports[mode], 4, requests, expected[mode], 100, 30.0))  # warm-up
        # On and off take turns level by level, so a change in the machine's load hits both.
        for _ in range(args.repeats):
            for clients in levels:
                for mode in ("on", "off"):
                    run = asyncio.run(load(ports[mode], clients, requests, expected[mode],
                                           args.requests, args.seconds))
                    runs.append({"batching": mode, **run})
                    print(f"batching {mode:>3}  clients {clients:>4}  {run['requests']:>6} "
                          f"requests  {run['requests_per_s']:8.0f} req/s  p50 "
                          f"{run['p50_ms']:7.2f} ms  p99 {run['p99_ms']:7.2f} ms", flush=True)
    rows = [{"batching": mode, "clients": clients,
             "requests": sum(r["requests"] for r in same),
             **{key: statistics.median(r[key] for r in same)
                for key in ("requests_per_s", "p50_ms", "p99_ms")}}
            for mode in ("on", "off") for clients in levels
            for same in [[r for r in runs if (r["batching"], r["clients"]) == (mode, clients)]]]
    print(f"\nmedians of {args.repeats} run(s) per level\n"
          "| clients | batching on: req/s | p50 ms | p99 ms | batching off: req/s | p50 ms "
          "| p99 ms | on/off |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for clients in levels:
        on, off = (next(r for r in rows if r["clients"] == clients and r["batching"] == b)
                   for b in ("on", "off"))
        print(f"| {clients} | {on['requests_per_s']:.0f} | {on['p50_ms']:.2f} | "
              f"{on['p99_ms']:.2f} | {off['requests_per_s']:.0f} | {off['p50_ms']:.2f} | "
              f"{off['p99_ms']:.2f} | {on['requests_per_s'] / off['requests_per_s']:.2f} |")
    return rows


if __name__ == "__main__":
    main()

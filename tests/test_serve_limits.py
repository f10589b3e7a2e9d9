"""The server in this process (uvicorn on a thread, loopback): batching proven by its metrics,
503 when the queue is full, 500 from a failing model, slow headers, the connection cap.

Skipped when Starlette, uvicorn or prometheus-client is missing; with
``FNLEARN_REQUIRE_SERVE=1`` (CI sets it) a missing one is a failure instead.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fnlearn
from fnlearn import nn
from fnlearn.export import export_model


def _require(*modules: str) -> None:
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as error:
        reason = f"the server needs {error.name}; pip install -e '.[serve]'"
        if os.environ.get("FNLEARN_REQUIRE_SERVE") == "1":
            pytest.fail(f"FNLEARN_REQUIRE_SERVE=1 but {reason}", pytrace=False)
        pytest.skip(reason)


_require("starlette", "uvicorn", "prometheus_client")

import uvicorn  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from fnlearn.serve import versions  # noqa: E402
from fnlearn.serve.batching import BatchPolicy  # noqa: E402
from fnlearn.serve.http import create_app  # noqa: E402
from fnlearn.serve.server import guarded_protocol  # noqa: E402

PREDICT = "/v1/models/mnist:predict"


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """An MNIST MLP on uint8 pixels, its export and 16 images with their predictions."""
    model = nn.serial(nn.Normalize(0, 255), nn.Flatten(), nn.Dense(32, "relu"),
                      nn.Dense(10, "softmax"))
    params = nn.init(model, 0, (28, 28))
    path = export_model(model, params, (28, 28), np.uint8,
                        tmp_path_factory.mktemp("limits") / "mnist.fnx", platforms=("cpu",))
    x = np.random.default_rng(0).integers(0, 255, size=(16, 28, 28), dtype=np.uint8)
    return path, x, fnlearn.predict(model, params, x)  # 16 rows: the server's padded size


@contextlib.contextmanager
def serving(app, header_timeout_s: float = 10.0, max_connections: int = 512):
    """Runs ``app`` with uvicorn and the server's guards on a thread; yields its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
        http=guarded_protocol(header_timeout_s, max_connections)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(60)


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def body(x: np.ndarray) -> bytes:
    return json.dumps({"instances": x.tolist()}).encode()


def samples(port: int) -> dict[tuple, float]:
    """Every sample of the metrics page: ``(name, sorted labels) -> value``."""
    status, text = request(port, "GET", "/monitoring/prometheus/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(all_samples: dict, name: str, **labels) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(value for (sample, sample_labels), value in all_samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def open_requests(port: int, payloads: list[bytes]) -> list[socket.socket]:
    """Sends each request's headers and all of its body but the last byte."""
    connections = []
    for payload in payloads:
        connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        connection.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                           % (PREDICT.encode(), len(payload), payload[:-1]))
        connections.append(connection)
    return connections


def finish_requests(connections: list[socket.socket], payloads: list[bytes]) -> list[tuple]:
    """Sends every last byte at once, then reads the answers ``(status, JSON)``."""
    for connection, payload in zip(connections, payloads):
        connection.sendall(payload[-1:])
    answers = []
    for connection in connections:
        response = http.client.HTTPResponse(connection)
        response.begin()
        answers.append((response.status, json.loads(response.read())))
        connection.close()
    return answers


@pytest.mark.parametrize("batching", [True, False], ids=["batching on", "batching off"])
def test_concurrent_requests_are_merged_into_one_model_call(mnist, batching):
    path, x, expected = mnist
    policy = BatchPolicy(enabled=batching, max_batch_size=16, timeout_s=5.0)
    with serving(create_app(path, name="mnist", policy=policy)) as port:
        before = samples(port)
        payloads = [body(x[i:i + 1]) for i in range(16)]
        # All 16 are being read when the first is complete: the batch waits for them.
        answers = finish_requests(open_requests(port, payloads), payloads)
        after = samples(port)
    for i, (status, answer) in enumerate(answers):
        assert status == 200 and np.array_equal(np.float32(answer["predictions"]),
                                                expected[i:i + 1])
    calls = (metric(after, "fnlearn_serve_batch_rows_count", model="mnist")
             - metric(before, "fnlearn_serve_batch_rows_count", model="mnist"))
    rows = (metric(after, "fnlearn_serve_batch_rows_sum", model="mnist")
            - metric(before, "fnlearn_serve_batch_rows_sum", model="mnist"))
    if batching:
        assert (calls, rows) == (1, 16)
    else:  # what the batching test would see without merging: it must not pass by accident
        assert (calls, rows) == (16, 16)


def test_metrics_count_requests_by_status_and_time_them(mnist):
    path, x, expected = mnist
    with serving(create_app(path, name="mnist")) as port:
        before = samples(port)
        for i in range(5):
            assert request(port, "POST", PREDICT, body(x[i:i + 1]))[0] == 200
        assert request(port, "POST", PREDICT, b"{")[0] == 400
        after = samples(port)

    def moved(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert moved("fnlearn_serve_requests_total", model="mnist", protocol="rest",
                 status="200", signature="serving_default") == 5
    assert moved("fnlearn_serve_requests_total", model="mnist", status="400") == 1
    assert moved("fnlearn_serve_request_latency_seconds_count", model="mnist") == 6
    assert moved("fnlearn_serve_request_latency_seconds_sum", model="mnist") > 0
    assert moved("fnlearn_serve_request_latency_seconds_bucket", model="mnist", le="+Inf") == 6
    assert moved("fnlearn_serve_batch_rows_sum", model="mnist") == 5
    assert metric(after, "fnlearn_serve_queue_depth", model="mnist") == 0
    assert metric(after, "fnlearn_serve_version_loads_total", model="mnist",
                  outcome="loaded") == 1


def test_a_full_queue_answers_503_and_the_others_are_served(mnist):
    path, x, expected = mnist
    policy = BatchPolicy(max_batch_size=16, timeout_s=5.0, max_queued=1)
    with serving(create_app(path, name="mnist", policy=policy)) as port:
        payloads = [body(x[i:i + 1]) for i in range(3)]
        answers = finish_requests(open_requests(port, payloads), payloads)
        assert request(port, "POST", PREDICT, body(x[:2]))[0] == 200
    refused = [answer for status, answer in answers if status == 503]
    served = [i for i, (status, _) in enumerate(answers) if status == 200]
    assert len(refused) >= 1 and served, answers
    assert all("1 requests are waiting; try again later" in a["error"] for a in refused)
    for i in served:
        assert np.array_equal(np.float32(answers[i][1]["predictions"]), expected[i:i + 1])


def test_a_failure_inside_the_model_is_a_500_and_serving_goes_on(mnist):
    path, x, expected = mnist
    policy = BatchPolicy(max_batch_size=16)

    def load_failing_on_white_corners(name, version, file):
        servable = versions.load_version(name, version, file, policy.batch_sizes)
        call = servable.call

        def failing(batch):
            if (batch[:, 0, 0] == 255).any():
                raise RuntimeError("the accelerator fell over")
            return call(batch)

        servable.call = failing
        return servable

    corner = x[:1].copy()
    corner[0, 0, 0] = 255
    app = create_app(path, name="mnist", policy=policy, load=load_failing_on_white_corners)
    with serving(app) as port:
        status, text = request(port, "POST", PREDICT, body(corner))
        good_status, good = request(port, "POST", PREDICT, body(x[:3]))
    assert status == 500
    assert json.loads(text) == {"error": "internal error: RuntimeError: the accelerator fell over"}
    assert good_status == 200 and np.array_equal(np.float32(json.loads(good)["predictions"]),
                                                  expected[:3])


def test_slow_headers_are_cut_off_while_others_are_served(mnist):
    path, x, expected = mnist
    with serving(create_app(path, name="mnist"), header_timeout_s=1.0) as port:
        slow = []
        for _ in range(200):  # a slowloris: part of a header block, then nothing
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.sendall(b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\nX-a: ")
            slow.append(connection)
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda i: request(port, "POST", PREDICT,
                                                       body(x[i:i + 1]))[0], range(16)))
        assert statuses == [200] * 16
        closed = 0
        for connection in slow:
            connection.settimeout(max(5.0 - (time.monotonic() - started), 0.1))
            try:
                closed += connection.recv(100) == b""  # the server hung up
            except (TimeoutError, ConnectionResetError):
                pass
            connection.close()
    assert closed == 200


def test_connections_beyond_the_cap_get_503_at_once(mnist):
    path, x, expected = mnist
    with serving(create_app(path, name="mnist"), max_connections=5) as port:
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
        time.sleep(0.2)
        status, text = request(port, "GET", "/v1/models/mnist")
        for connection in held:
            connection.close()
        time.sleep(0.2)
        assert request(port, "GET", "/v1/models/mnist")[0] == 200
    assert status == 503 and "5 connections are open; try again later" in text

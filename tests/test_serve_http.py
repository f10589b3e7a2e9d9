"""The HTTP server as a real subprocess on loopback, spoken to with the standard library's client.

Skipped when Starlette or uvicorn is missing; with ``FNLEARN_REQUIRE_SERVE=1`` (CI
sets it) a missing one is a failure instead.
"""

from __future__ import annotations

import http.client
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fnlearn
from fnlearn import nn
from fnlearn.export import export_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _require_serve() -> None:
    try:
        importlib.import_module("starlette")
        importlib.import_module("uvicorn")
    except ImportError as error:
        reason = f"the server needs Starlette and uvicorn ({error}); pip install -e '.[serve]'"
        if os.environ.get("FNLEARN_REQUIRE_SERVE") == "1":
            pytest.fail(f"FNLEARN_REQUIRE_SERVE=1 but {reason}", pytrace=False)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m fnlearn.serve ARGUMENTS`` in a subprocess on free loopback ports, and requests.

    ``grpc=True`` serves gRPC too (on ``grpc_port``); otherwise ``--port 0`` turns it off.
    """

    def __init__(self, *arguments, grpc: bool = False, model: str = "mnist"):
        _require_serve()
        self.port = _free_port()
        self.grpc_port = _free_port() if grpc else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fnlearn.serve", *map(str, arguments),
             "--rest_api_port", str(self.port), "--port", str(self.grpc_port)],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stdout.read()[-3000:]}")
            try:
                if self.request("GET", f"/v1/models/{model}")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not start within 120 s")

    def request(self, method: str, path: str, body: bytes | None = None):
        """``(status, JSON answer)`` of one request on a fresh connection."""
        status, text = self.request_text(method, path, body)
        return status, json.loads(text)

    def request_text(self, method: str, path: str, body: bytes | None = None):
        """``(status, body text)`` of one request on a fresh connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def predict(self, x: np.ndarray, row_format: bool = True,
                path: str = "/v1/models/mnist:predict") -> np.ndarray:
        key = "instances" if row_format else "inputs"
        status, answer = self.request("POST", path, json.dumps({key: x.tolist()}).encode())
        assert status == 200, answer
        return np.asarray(answer["predictions" if row_format else "outputs"], np.float32)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """An initialized MNIST MLP on raw uint8 pixels, its export, and 64 test images."""
    model = nn.serial(nn.Normalize(0, 255), nn.Flatten(), nn.Dense(128, "relu"),
                      nn.Dense(10, "softmax"))
    params = nn.init(model, 0, (28, 28))
    path = export_model(model, params, (28, 28), np.uint8,
                        tmp_path_factory.mktemp("serve") / "mnist.fnx")
    x = np.random.default_rng(0).integers(0, 256, size=(64, 28, 28), dtype=np.uint8)
    # 64 rows: fnlearn.predict runs them as one batch of 64, in the same matrix-multiply
    # regime as the server's padded sizes (32, 64, 128), so the bits agree row for row.
    return model, params, path, x, fnlearn.predict(model, params, x)


@pytest.fixture(scope="module")
def server(mnist):
    running = Server(mnist[2], "--model_name", "mnist", "--max-body-bytes", "200000",
                     "--batch-timeout-ms", "5")
    yield running
    running.stop()


def test_status_and_metadata(server):
    assert server.request("GET", "/v1/models/mnist") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                           "error_message": ""}}]})
    status, metadata = server.request("GET", "/v1/models/mnist/versions/1/metadata")
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    inputs, outputs = signature["inputs"]["inputs"], signature["outputs"]["outputs"]
    assert status == 200 and metadata["model_spec"]["name"] == "mnist"
    assert [d["size"] for d in inputs["tensor_shape"]["dim"]] == ["-1", "28", "28"]
    assert [d["size"] for d in outputs["tensor_shape"]["dim"]] == ["-1", "10"]
    assert (inputs["dtype"], outputs["dtype"]) == ("DT_UINT8", "DT_FLOAT")


def test_predictions_equal_fnlearn_predict_bit_for_bit(server, mnist):
    *_, x, expected = mnist
    assert np.array_equal(server.predict(x[:1]), expected[:1])
    assert np.array_equal(server.predict(x[1:40]), expected[1:40])
    assert np.array_equal(server.predict(x[40:], row_format=False), expected[40:])
    status, answer = server.request("POST", "/v1/models/mnist/versions/1:predict", json.dumps(
        {"signature_name": "serving_default",
         "instances": [{"inputs": image} for image in x[:3].tolist()]}).encode())
    assert status == 200 and np.array_equal(np.float32(answer["predictions"]), expected[:3])


def test_concurrent_clients_each_get_their_own_rows(server, mnist):
    *_, x, expected = mnist
    # 48 requests of 1 to 3 distinct rows from 24 threads at once.
    slices = [slice(i % 62, i % 62 + 1 + i % 3) for i in range(48)]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda s: server.predict(x[s]), slices))
    for rows, answer in zip(slices, answers):
        assert np.array_equal(answer, expected[rows])


def _body(value) -> bytes:
    return json.dumps(value).encode()


PREDICT = "/v1/models/mnist:predict"
GOOD = np.zeros((28, 28), np.uint8).tolist()
BAD_REQUESTS = [
    ("malformed JSON", "POST", PREDICT, b'{"instances": [[1, 2', 400, "not valid JSON"),
    ("not an object", "POST", PREDICT, b"[1, 2]", 400, "must be a JSON object"),
    ("no instances or inputs", "POST", PREDICT, _body({"x": 1}), 400, "exactly one of"),
    ("wrong shape", "POST", PREDICT, _body({"instances": [GOOD[:27]]}), 400,
     r"has shape (1, 27, 28) (examples of shape (27, 28)); the model takes examples of shape"),
    ("ragged", "POST", PREDICT, _body({"instances": [GOOD, GOOD[:27]]}), 400,
     "not a rectangular array"),
    ("wrong dtype: floats", "POST", PREDICT, _body({"instances": [[[0.5] * 28] * 28]}), 400,
     "non-integer numbers; the model takes uint8"),
    ("wrong dtype: out of range", "POST", PREDICT, _body({"instances": [[[300] * 28] * 28]}),
     400, "holds 300, outside the range of the model's dtype uint8 [0, 255]"),
    ("wrong dtype: text", "POST", PREDICT, _body({"instances": [[["a"] * 28] * 28]}), 400,
     "holds text"),
    ("NaN", "POST", PREDICT, _body({"instances": [GOOD[:3] + [GOOD[3][:4] + [float("nan")]
                                                                  + GOOD[3][5:]] + GOOD[4:]]}),
     400, "contains NaN or infinity (first at index (0, 3, 4))"),
    ("infinity", "POST", PREDICT, _body({"inputs": [[[float("inf")] * 28] * 28]}), 400,
     "contains NaN or infinity (first at index (0, 0, 0))"),
    ("empty instances", "POST", PREDICT, _body({"instances": []}), 400, "is empty"),
    ("unknown signature", "POST", PREDICT, _body({"signature_name": "x", "instances": [GOOD]}),
     400, "unknown signature_name 'x'"),
    ("body too large", "POST", PREDICT, b" " * 250_000, 413,
     "request body of 250000 bytes exceeds the limit of 200000 bytes"),
    ("unknown model", "POST", "/v1/models/other:predict", _body({"instances": [GOOD]}), 404,
     "model 'other' is not served here; this server serves 'mnist'"),
    ("unknown version", "POST", "/v1/models/mnist/versions/2:predict",
     _body({"instances": [GOOD]}), 404, "has no version '2'; it serves version 1"),
    ("unknown version status", "GET", "/v1/models/mnist/versions/7", None, 404,
     "has no version '7'"),
    ("predict with GET", "GET", PREDICT, None, 405, "predict takes POST, not GET"),
    ("unknown path", "GET", "/v2/x", None, 404, "Not Found: GET /v2/x"),
    ("no model named", "GET", "/v1/models", None, 404, "name a model: /v1/models/mnist"),
    ("no model named, slash", "GET", "/v1/models/", None, 404,
     "name a model: /v1/models/mnist"),
    ("unknown label", "GET", "/v1/models/mnist/labels/stable", None, 404,
     "model 'mnist' has no label 'stable'"),
]


@pytest.mark.parametrize("method, path, body, status, message",
                         [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_refused_clearly_and_serving_goes_on(server, mnist, method, path, body,
                                                            status, message):
    *_, x, expected = mnist
    assert np.array_equal(server.predict(x[:2]), expected[:2])
    got_status, answer = server.request(method, path, body)
    assert got_status == status and message in answer["error"], answer
    assert list(answer) == ["error"]
    assert np.array_equal(server.predict(x[2:5]), expected[2:5])


def test_empty_signature_name_and_unknown_keys_are_accepted_as_tf_serving_does(server, mnist):
    *_, x, expected = mnist
    status, answer = server.request("POST", PREDICT, _body(
        {"signature_name": "", "instances": x[:2].tolist(), "extra": {"ignored": True}}))
    assert status == 200 and np.array_equal(np.float32(answer["predictions"]), expected[:2])


def _send_partial(port: int, body: bytes, split: int) -> socket.socket:
    """Opens a connection and sends a predict request's headers and ``body[:split]``."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:split])
    return connection


def _answer(connection: socket.socket) -> tuple[int, dict]:
    response = http.client.HTTPResponse(connection)
    response.begin()
    return response.status, json.loads(response.read())


def test_chunked_body_over_the_limit_is_refused_while_streaming(server, mnist):
    *_, x, expected = mnist
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    connection.sendall(b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b" " * 50_000
    try:
        for _ in range(5):  # 250 000 bytes, no Content-Length to refuse them by
            connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        connection.sendall(b"0\r\n\r\n")
    except OSError:  # the server may answer and close before the last chunk
        pass
    status, answer = _answer(connection)
    connection.close()
    assert status == 413 and "exceeds the limit of 200000 bytes" in answer["error"]
    assert np.array_equal(server.predict(x[:2]), expected[:2])


def test_request_timeouts_and_a_full_batch_that_does_not_wait(mnist):
    *_, path, x, expected = mnist
    timed = Server(path, "--name", "mnist", "--request-timeout", "2.0", "--batch-timeout-ms",
                   "10000", "--max-batch-size", "32")
    body = _body({"instances": x[:1].tolist()})
    try:
        # Two slow clients keep a batch waiting past the third request's deadline.
        first_slow = _send_partial(timed.port, body, 10)
        time.sleep(0.6)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(timed.request, "POST", "/v1/models/mnist:predict", body)
            time.sleep(0.6)
            second_slow = _send_partial(timed.port, body, 10)
            status, answer = waiting.result()
        assert status == 504, answer
        assert "no prediction within the request timeout of 2.0 s" in answer["error"]
        for slow in (first_slow, second_slow):
            status, answer = _answer(slow)
            slow.close()
            assert status == 408 and "did not arrive within 2.0 s" in answer["error"]
        # 32 concurrent requests: the batch closes when full or when all in progress have
        # joined, never waiting out the 10 s batch timeout.
        start = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda i: timed.predict(x[i:i + 1]), range(32)))
        assert time.monotonic() - start < 5.0
        assert np.array_equal(np.concatenate(answers), expected[:32])
    finally:
        timed.stop()


def test_sigterm_finishes_the_request_in_flight_then_exits(mnist):
    *_, path, x, expected = mnist
    stopping = Server(path, "--model_name", "mnist")
    body = _body({"instances": x[:3].tolist()})
    in_flight = _send_partial(stopping.port, body, len(body) // 2)
    time.sleep(0.3)
    stopping.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    with pytest.raises(ConnectionRefusedError):  # no new connections once shutting down
        while time.monotonic() < deadline:
            socket.create_connection(("127.0.0.1", stopping.port), timeout=5).close()
            time.sleep(0.1)
    in_flight.sendall(body[len(body) // 2:])
    status, answer = _answer(in_flight)
    in_flight.close()
    assert status == 200 and np.array_equal(np.float32(answer["predictions"]), expected[:3])
    assert stopping.stop() == -signal.SIGTERM  # uvicorn re-raises the signal once done


def test_cli_modes(mnist, tmp_path, capsys):
    from fnlearn.serve import main

    *_, path, x, expected = mnist
    np.save(tmp_path / "x.npy", x[:4])
    assert main(["predict", str(path), str(tmp_path / "x.npy")]) == 0
    assert capsys.readouterr().out.strip() == "argmax: " + " ".join(
        map(str, expected[:4].argmax(axis=1)))
    with pytest.raises(SystemExit):
        main([str(path), "--out", "x.npy"])
    assert "--out is for file mode" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(path), "--max-batch-size", "64", "--batch-sizes", "8,16"])
    assert "largest batch size 16 is below max_batch_size 64" in capsys.readouterr().err


def test_no_pickle_in_the_serving_code():
    for source in (ROOT / "fnlearn" / "serve").glob("*.py"):
        text = source.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, source


def test_load_benchmark_runs_end_to_end_with_every_answer_checked():
    _require_serve()
    from experiments import serve_benchmark

    rows = serve_benchmark.main(["--clients", "1,4", "--requests", "40", "--seconds", "20",
                                 "--workers", "1"])
    assert [(r["protocol"], r["batching"], r["clients"], r["requests"]) for r in rows] == [
        (protocol, batching, clients, 40) for protocol in ("rest", "grpc")
        for batching in ("on", "off") for clients in (1, 4)]
    assert all(r["requests_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)


def test_two_worker_processes_share_the_port_and_add_up_their_metrics(mnist):
    from prometheus_client.parser import text_string_to_metric_families

    def total(text: str, name: str) -> float:
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples if sample.name == name)

    *_, path, x, expected = mnist
    workers = Server(path, "--model_name", "mnist", "--workers", "2")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the first answer came from one of them
            _, text = workers.request_text("GET", "/monitoring/prometheus/metrics")
            if total(text, "fnlearn_serve_version_loads_total") == 2:
                break
            time.sleep(0.2)
        with ThreadPoolExecutor(8) as pool:  # fresh connections: the kernel spreads them
            answers = list(pool.map(lambda i: workers.predict(x[i:i + 1]), range(40)))
        status, text = workers.request_text("GET", "/monitoring/prometheus/metrics")
    finally:
        code = workers.stop()
    assert np.array_equal(np.concatenate(answers), expected[:40])
    # whichever worker answered the scrape, it counts both workers' loads and requests
    assert total(text, "fnlearn_serve_version_loads_total") == 2
    assert status == 200 and total(text, "fnlearn_serve_requests_total") == 40
    assert code == -signal.SIGTERM

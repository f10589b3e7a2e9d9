"""Running the server: uvicorn with a header timeout and a connection cap, in one or more processes.

One worker process serves the REST API (``fnlearn.serve.http``) and, given a port, gRPC
(``fnlearn.serve.grpc``) from one event loop. With ``workers > 1`` the parent binds the
REST port once and starts that many workers on it (the kernel hands each new
connection to one of them); their gRPC servers share the gRPC port with SO_REUSEPORT.
Each worker loads the models and watches the base paths on its own, and their metrics
are added up (``fnlearn.serve.metrics``).

Against slow clients: a connection must send its complete header block within
``header_timeout_s`` of connecting (and of starting each further request), or it is
closed; at most ``max_connections`` connections are open at once per worker, a
connection beyond them gets 503 and is closed at once.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
from multiprocessing.connection import wait

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fnlearn.serve.http import create_app
from fnlearn.serve.metrics import MULTIPROCESS_ENV

logger = logging.getLogger("fnlearn.serve")


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type:
    """uvicorn's httptools protocol with a header timeout and a cap on open connections.

    Args:
      header_timeout_s: the longest a request's header block may take to arrive.
      max_connections: connections beyond this many get 503 and are closed.

    Returns:
      A protocol class for ``uvicorn.Config(http=...)``.
    """
    body = json.dumps({"error": f"server unavailable: {max_connections} connections are open; "
                                "try again later"}).encode()
    over_cap = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    class GuardedProtocol(HttpToolsProtocol):
        header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(over_cap)
                transport.close()
                return
            self.start_header_timer()

        def start_header_timer(self) -> None:
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(header_timeout_s, self.header_timeout)

        def stop_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def header_timeout(self) -> None:
            self.header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.start_header_timer()  # a keep-alive connection's next request

        def on_headers_complete(self) -> None:
            self.stop_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self.stop_header_timer()
            super().connection_lost(exc)

    return GuardedProtocol


def run_worker(app_options: dict, *, host: str, port: int, sock: socket.socket | None = None,
               header_timeout_s: float = 10.0, max_connections: int = 512,
               graceful_timeout_s: float = 30.0, access_log: bool = False) -> int:
    """One server process: builds the app and runs uvicorn until SIGINT or SIGTERM.

    Args:
      app_options: ``create_app``'s arguments (``models`` and options).
      host, port: the REST address to bind (ignored when ``sock`` is given).
      sock: a bound listening socket shared with other workers.
      header_timeout_s, max_connections: see ``guarded_protocol``.
      graceful_timeout_s: the longest a shutdown waits for requests in flight.
      access_log: log every request.

    Returns:
      The exit status: 0 after serving, 1 if the server failed to start (a port in use).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    app = create_app(**app_options)
    # The loaded model and JAX leave hundreds of thousands of long-lived objects; a full
    # garbage collection walking them stalled every request in flight for ~60 ms (the p99
    # of experiments/serve_benchmark.py). Frozen, they are never walked again.
    gc.freeze()
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, lifespan="on",
                            http=guarded_protocol(header_timeout_s, max_connections),
                            timeout_graceful_shutdown=graceful_timeout_s, log_level="info")
    server = uvicorn.Server(config)
    server.run(sockets=[sock] if sock is not None else None)
    return 0 if server.started else 1


def _worker_main(app_options: dict, options: dict, sock: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops workers with SIGTERM
    sys.exit(run_worker(app_options, sock=sock, **options))


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OSError(f"cannot bind gRPC to {host}:{port}: {error.strerror}") from None


def serve(app_options: dict, *, host: str = "127.0.0.1", port: int = 8501, workers: int = 1,
          **options) -> int:
    """Serves until SIGINT or SIGTERM with ``workers`` processes; returns the exit status.

    On either signal the server stops accepting connections, finishes the requests in
    flight (for at most ``graceful_timeout_s``), then exits.

    Args:
      app_options: ``create_app``'s arguments.
      host, port: the REST address; 127.0.0.1 is reachable from this machine only.
      workers: processes serving the same ports.
      **options: ``run_worker``'s options.

    Raises:
      OSError: a port cannot be bound.
    """
    if workers == 1:
        return run_worker(app_options, host=host, port=port, **options)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    if app_options.get("grpc_port"):
        _check_port_free(app_options.get("grpc_host", host), app_options["grpc_port"])
    app_options = {**app_options, "grpc_reuse_port": True}
    with tempfile.TemporaryDirectory(prefix="fnlearn-metrics-") as metrics_dir:
        # Read by prometheus_client when the spawned workers import it.
        os.environ.setdefault(MULTIPROCESS_ENV, metrics_dir)
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_worker_main, name=f"fnlearn-serve-{i}",
                                     args=(app_options, {"host": host, "port": port, **options},
                                           sock)) for i in range(workers)]
        for process in processes:
            process.start()
        stopping = []

        def stop(signum, frame):
            stopping.append(signum)
            for process in processes:
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            wait([p.sentinel for p in processes])  # returns when the first worker ends
            if not stopping:
                logger.error("a worker exited with status %s; stopping the others",
                             [p.exitcode for p in processes])
                stop(signal.SIGTERM, None)
            for process in processes:
                process.join()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            sock.close()
    if stopping:
        sys.stdout.flush()
        # Exit by the signal, as a single uvicorn process does, for process supervisors.
        signal.signal(stopping[0], signal.SIG_DFL)
        os.kill(os.getpid(), stopping[0])
    return 1

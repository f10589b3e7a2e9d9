"""Prometheus metrics of the server, scraped at ``/monitoring/prometheus/metrics``.

Made with ``prometheus_client`` on a registry of the server's own (importing this module
registers nothing). With several worker processes the parent sets
``PROMETHEUS_MULTIPROC_DIR`` before starting them, each worker's values go to files
there, and a scrape (answered by any worker) adds them up across workers.

- ``fnlearn_serve_requests_total`` (counter; model, signature, protocol ``rest`` or
  ``grpc``, status: the HTTP status or gRPC code) and
  ``fnlearn_serve_request_latency_seconds`` (histogram; model, signature, protocol):
  predict requests;
- ``fnlearn_serve_batch_rows`` (histogram; model, version): the rows of each model call;
- ``fnlearn_serve_queue_depth`` (gauge; model, version): requests waiting for the model;
- ``fnlearn_serve_version_loads_total`` (counter; model, outcome ``loaded`` or ``failed``).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

PATH = "/monitoring/prometheus/metrics"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0)


class Metrics(NamedTuple):
    """The server's metrics and the registry they live on."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    batch_rows: Histogram
    queue_depth: Gauge
    version_loads: Counter


def create_metrics(max_batch_size: int = 128) -> Metrics:
    """A fresh set of the server's metrics on a registry of their own.

    Args:
      max_batch_size: the largest model call, the top bucket of ``batch_rows``.
    """
    registry = CollectorRegistry()
    rows_buckets = sorted({2**k for k in range(max_batch_size.bit_length())} | {max_batch_size})
    return Metrics(
        registry,
        Counter("fnlearn_serve_requests", "Requests answered, by status.",
                ["model", "signature", "protocol", "status"], registry=registry),
        Histogram("fnlearn_serve_request_latency_seconds",
                  "Seconds from the start of a request to its answer.",
                  ["model", "signature", "protocol"], buckets=_LATENCY_BUCKETS,
                  registry=registry),
        Histogram("fnlearn_serve_batch_rows", "Rows of each model call, before padding.",
                  ["model", "version"], buckets=[float(b) for b in rows_buckets],
                  registry=registry),
        Gauge("fnlearn_serve_queue_depth", "Requests waiting for the model.",
              ["model", "version"], multiprocess_mode="livesum", registry=registry),
        Counter("fnlearn_serve_version_loads", "Model versions loaded, failed or unloaded.",
                ["model", "outcome"], registry=registry))


def scrape(metrics: Metrics) -> tuple[bytes, str]:
    """The text exposition of ``metrics`` (summed over workers in multiprocess mode) and its
    content type."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST

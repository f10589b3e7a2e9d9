"""Exported models served over HTTP with TensorFlow Serving's REST API (Starlette).

``create_app`` loads the models' versions (``fnlearn.serve.versions``), compiles them
once per padded batch size, and answers:

* ``GET  /v1/models/NAME[/versions/N | /labels/L]``: the versions' states;
* ``GET  /v1/models/NAME[/versions/N | /labels/L]/metadata``: input and output shapes, dtypes;
* ``POST /v1/models/NAME[/versions/N | /labels/L]:predict``: predictions, through the
  version's ``DynamicBatcher``;
* ``GET  /monitoring/prometheus/metrics``: the server's metrics (``fnlearn.serve.metrics``).

Its lifespan starts the batchers, the base path watcher (new versions are swapped in
with no failed request) and, given a port, the gRPC server on the same models.
Errors are ``{"error": "..."}`` with a 4xx status for the client's mistakes (400 bad
request, 404 unknown model, version, label or path, 405 wrong method, 408 body too
slow, 413 body too large), 503/504 when the server is overloaded or too slow, and 500
for a failure inside the model; the server keeps serving after any of them. No request
is ever unpickled: bodies are JSON, decoded into NumPy arrays of the model's exact dtype.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from functools import partial
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fnlearn.serve import versions
from fnlearn.serve.batching import BatchPolicy, DynamicBatcher, OverloadedError
from fnlearn.serve.config import ModelSpec
from fnlearn.serve.metrics import PATH as METRICS_PATH
from fnlearn.serve.metrics import Metrics, create_metrics, scrape
from fnlearn.serve.protocol import (
    SIGNATURE_NAME,
    RequestError,
    check_range,
    parse_path,
    parse_request,
    predict_answer,
    status_document,
)

DEFAULT_MAX_BODY_BYTES = 16 * 2**20
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# Bodies larger than this are parsed in a thread, so one big request does not stall the others.
_PARSE_IN_THREAD_BYTES = 256 * 2**10

logger = logging.getLogger("fnlearn.serve")


def _json(document: dict, status: int = 200) -> Response:
    return Response(json.dumps(document, separators=(",", ":")), status,
                    media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, f"bad Content-Length header {length!r}")
        if int(length) > limit:
            raise RequestError(413, f"the request body of {int(length)} bytes exceeds the "
                                    f"limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _action(action: str, method: str) -> str:
    if action not in ("status", "metadata", "predict"):
        raise RequestError(404 if action not in ("classify", "regress") else 400,
                           f"unknown action {action!r}: this model answers :predict only")
    wanted = "POST" if action == "predict" else "GET"
    if method != wanted:
        raise RequestError(405, f"{action} takes {wanted}, not {method}")
    return action


def model_specs(model_path: str | Path, name: str | None = None,
                version: int = 1) -> list[ModelSpec]:
    """The one model of ``python -m fnlearn.serve MODEL``: a base path (a folder) or a file.

    Args:
      model_path: a folder of numbered version folders, or a file written by ``export_model``.
      name: the model's name (default: the folder's name, or the file name without suffix).
      version: the version number of a file.
    """
    path = Path(model_path)
    if path.is_dir():
        return [ModelSpec(name or path.resolve().name, base_path=path)]
    return [ModelSpec(name or path.stem, file=path, version=version)]


def create_app(models: list[ModelSpec] | str | Path, *, name: str | None = None,
               version: int = 1, policy: BatchPolicy | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, poll_s: float = 1.0,
               grpc_port: int = 0, grpc_host: str = "127.0.0.1", grpc_reuse_port: bool = False,
               load: versions.Loader | None = None,
               metrics: Metrics | None = None) -> Starlette:
    """The ASGI application serving ``models``.

    Args:
      models: what to serve (``ModelSpec`` list), or one export file or base path.
      name, version: the name and version of a single ``models`` path (see ``model_specs``).
      policy: how concurrent predict requests are batched (default ``BatchPolicy()``).
      max_body_bytes: larger request bodies are refused with 413.
      request_timeout_s: a predict request not answered within this many seconds gets
        408 (body still arriving) or 504 (inference).
      poll_s: seconds between scans of the base paths (0: scan once, at start).
      grpc_port: serve TF Serving's gRPC API on this port too (0: no gRPC).
      grpc_host: the address gRPC binds.
      grpc_reuse_port: let other worker processes bind the same gRPC port.
      load: loads one version, ``(name, version, path) -> Servable`` (default
        ``versions.load_version`` compiled for the policy's batch sizes).
      metrics: where to count (default: a fresh ``create_metrics()``).

    Returns:
      A Starlette app; its lifespan starts and stops batchers, watcher and gRPC server.

    Raises:
      FileNotFoundError, fnlearn.export.ExportError: a model file or base path is missing
        or a model file is bad.
      ValueError: a bad option.
    """
    policy = policy or BatchPolicy()
    if not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be a positive int, got {max_body_bytes!r}")
    if not request_timeout_s > 0:
        raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s!r}")
    if not poll_s >= 0:
        raise ValueError(f"poll_s must be >= 0, got {poll_s!r}")
    specs = models if isinstance(models, list) else model_specs(models, name, version)
    load = load or (lambda n, v, p: versions.load_version(n, v, p, policy.batch_sizes))
    metrics = metrics or create_metrics(policy.max_batch_size)
    table = versions.load_initial(specs, load)

    async def start(servable: versions.Servable) -> None:
        labels = (servable.name, str(servable.version))
        servable.batcher = DynamicBatcher(
            servable.call, policy, on_call=metrics.batch_rows.labels(*labels).observe,
            on_queue=metrics.queue_depth.labels(*labels).set)
        await servable.batcher.__aenter__()
        metrics.version_loads.labels(servable.name, "loaded").inc()

    async def predict(request: Request, target) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request_timeout_s
        servable = versions.resolve(table, target.name, target.version, target.label)
        with servable.batcher.incoming():
            try:
                body = await asyncio.wait_for(_read_body(request, max_body_bytes),
                                              request_timeout_s)
            except TimeoutError:
                return _error(408, f"the request body did not arrive within "
                                   f"{request_timeout_s} s")
            parse = partial(parse_request, body, servable.signature.inputs)
            x, row_format = (await asyncio.to_thread(parse) if len(body) > _PARSE_IN_THREAD_BYTES
                             else parse())

            async def submit_to_live():
                # Runs as its own task: the check for a closing batcher and ``submit`` must
                # happen with no await between them, or an unload could slip in.
                nonlocal servable, x, row_format
                while servable.batcher.closing:  # a newer version took over meanwhile
                    newer = versions.resolve(table, target.name, target.version, target.label)
                    if newer.signature.inputs != servable.signature.inputs:
                        x, row_format = parse_request(body, newer.signature.inputs)
                    servable = newer
                check_range(x[0], '"instances"' if row_format else '"inputs"',
                            servable.input_range)
                return await servable.batcher.submit(x[0] if len(x) == 1 else x)

            try:
                outputs = await asyncio.wait_for(submit_to_live(),
                                                 max(deadline - loop.time(), 0.0))
            except TimeoutError:
                return _error(504, f"no prediction within the request timeout of "
                                   f"{request_timeout_s} s")
            except OverloadedError as error:
                return _error(503, f"server unavailable: {error}")
        if isinstance(outputs, tuple):  # several outputs: the answer names them
            outputs = dict(zip(servable.signature.output_names, outputs))
        return Response(predict_answer(outputs, row_format), media_type="application/json")

    async def model_api(request: Request) -> Response:
        started = time.perf_counter()
        action, model = "", ""
        try:
            target = parse_path(request.path_params["rest"])
            action = _action(target.action, request.method)
            model = target.name if target.name in table else ""
            if action == "predict":
                response = await predict(request, target)
            elif action == "metadata":
                response = _json(versions.resolve(table, target.name, target.version,
                                                  target.label).metadata)
            else:
                found = versions.find_model(table, target.name)
                response = _json(status_document(versions.status_rows(found, target.version,
                                                                      target.label)))
        except RequestError as error:
            response = _error(error.status, str(error))
        except Exception as error:  # noqa: BLE001 - the server answers and keeps serving
            logger.exception("request failed")
            response = _error(500, f"internal error: {type(error).__name__}: {error}")
        if action == "predict":
            metrics.requests.labels(model, SIGNATURE_NAME, "rest",
                                    str(response.status_code)).inc()
            metrics.latency.labels(model, SIGNATURE_NAME, "rest").observe(
                time.perf_counter() - started)
        return response

    async def model_list(request: Request) -> Response:
        served = ", ".join(f"/v1/models/{n}" for n in sorted(table))
        return _error(404, f"name a model: {served}")

    async def api(request: Request) -> Response:
        if not request.path_params["rest"]:
            return await model_list(request)
        return await model_api(request)

    async def prometheus(request: Request) -> Response:
        text, content_type = scrape(metrics)
        return Response(text, media_type=content_type)

    async def http_error(request: Request, error: HTTPException) -> Response:
        served = ", ".join(f"/v1/models/{n}" for n in sorted(table))
        return _error(error.status_code, f"{error.detail}: {request.method} {request.url.path}; "
                                         f"the API is under {served}")

    async def watch() -> None:
        while True:
            await asyncio.sleep(poll_s)
            for model in table.values():
                if model.spec.base_path is None:
                    continue
                failed = dict(model.refused)
                try:
                    await versions.refresh(model, load, start)
                except Exception:  # noqa: BLE001 - the watcher must outlive one bad poll
                    logger.exception("model %r: polling %s failed", model.spec.name,
                                     model.spec.base_path)
                for version, fingerprint in model.refused.items():
                    if failed.get(version) != fingerprint:
                        metrics.version_loads.labels(model.spec.name, "failed").inc()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        for model in table.values():
            for servable in model.served.values():
                await start(servable)
            served = ", ".join(map(str, sorted(model.served))) or "none yet"
            logger.info("serving model %r versions %s (%s), batching %s", model.spec.name,
                        served, model.spec.file or f"{model.spec.base_path}, policy "
                                                    f"{model.spec.policy.describe()}",
                        f"up to {policy.max_batch_size} rows" if policy.enabled else "off")
        watcher = (asyncio.get_running_loop().create_task(watch())
                   if poll_s > 0 and any(m.spec.base_path for m in table.values()) else None)
        grpc_server = None
        if grpc_port:
            from fnlearn.serve.grpc import start_grpc

            grpc_server = start_grpc(table, asyncio.get_running_loop(), metrics,
                                     host=grpc_host, port=grpc_port, reuse_port=grpc_reuse_port,
                                     request_timeout_s=request_timeout_s,
                                     max_message_bytes=max_body_bytes)
        try:
            yield
        finally:
            if grpc_server is not None:
                await asyncio.to_thread(lambda: grpc_server.stop(5.0).wait())
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            for model in table.values():
                for servable in list(model.served.values()):
                    await servable.batcher.close()

    routes = [Route("/v1/models", model_list, methods=["GET", "POST"]),
              Route("/v1/models/{rest:path}", api, methods=["GET", "POST"]),
              Route(METRICS_PATH, prometheus, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error},
                     lifespan=lifespan)

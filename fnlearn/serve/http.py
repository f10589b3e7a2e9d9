"""An exported model served over HTTP with TensorFlow Serving's REST API (Starlette on uvicorn).

``create_app`` loads a file written by ``fnlearn.export.export_model``, compiles
it once per padded batch size, and answers:

* ``GET  /v1/models/NAME[/versions/N]``: the model's status;
* ``GET  /v1/models/NAME[/versions/N]/metadata``: input and output shapes and dtypes;
* ``POST /v1/models/NAME[/versions/N]:predict``: predictions, through a ``DynamicBatcher``.

Errors are ``{"error": "..."}`` with a 4xx status for the client's mistakes (400 bad
request, 404 unknown model, version or path, 405 wrong method, 408 body too slow,
413 body too large) and 503/504 when the server is overloaded or too slow; the
server keeps serving after any of them. No request is ever unpickled: bodies are
JSON, decoded into NumPy arrays of the model's exact dtype.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
from pathlib import Path

import jax
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fnlearn.export import load_exported
from fnlearn.serve.batching import BatchPolicy, DynamicBatcher, OverloadedError
from fnlearn.serve.protocol import (
    RequestError,
    metadata_document,
    parse_path,
    parse_predict,
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


def _compiled(exported: jax.export.Exported, batch_sizes: tuple[int, ...]):
    """``exported`` jitted, compiled for each of ``batch_sizes`` before any request arrives."""
    call = jax.jit(exported.call)
    aval = exported.in_avals[0]
    for size in batch_sizes:
        np.asarray(call(np.zeros((size, *aval.shape[1:]), aval.dtype)))
    return lambda x: np.asarray(call(x))


def create_app(model_path: str | Path, *, name: str | None = None, version: int = 1,
               policy: BatchPolicy | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> Starlette:
    """The ASGI application serving the export at ``model_path``.

    Args:
      model_path: a file written by ``fnlearn.export.export_model``.
      name: the model's name in paths (default: the file name without its suffix).
      version: the version number it answers to in ``/versions/N`` paths.
      policy: how concurrent predict requests are batched (default ``BatchPolicy()``).
      max_body_bytes: larger request bodies are refused with 413.
      request_timeout_s: a predict request not answered within this many seconds gets
        408 (body still arriving) or 504 (inference).

    Returns:
      A Starlette app; its lifespan starts and stops the batcher.

    Raises:
      FileNotFoundError, fnlearn.export.ExportError: the model file is missing or bad.
      ValueError: a bad option.
    """
    policy = policy or BatchPolicy()
    if not isinstance(version, int) or version <= 0:
        raise ValueError(f"version must be a positive int, got {version!r}")
    if not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be a positive int, got {max_body_bytes!r}")
    if not request_timeout_s > 0:
        raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s!r}")
    loaded = load_exported(model_path)
    exported, meta = loaded.exported, loaded.meta
    name = name or Path(model_path).stem
    version_text = str(version)
    in_aval, out_aval = exported.in_avals[0], exported.out_avals[0]
    example_shape = tuple(int(d) for d in in_aval.shape[1:])
    in_dtype = np.dtype(in_aval.dtype)
    metadata = metadata_document(name, version_text, tuple(in_aval.shape), in_dtype,
                                 tuple(out_aval.shape), np.dtype(out_aval.dtype), meta)
    run = _compiled(exported, policy.batch_sizes)

    def resolve(target_rest: str, method: str):
        target = parse_path(target_rest)
        if target.name != name:
            raise RequestError(404, f"model {target.name!r} is not served here; this server "
                                    f"serves {name!r}")
        if target.version is not None and target.version != version_text:
            raise RequestError(404, f"model {name!r} has no version {target.version!r}; it "
                                    f"serves version {version_text}")
        if target.label is not None:
            raise RequestError(404, f"model {name!r} has no label {target.label!r}; ask for "
                                    f"/versions/{version_text}")
        if target.action not in ("status", "metadata", "predict"):
            raise RequestError(404 if target.action not in ("classify", "regress") else 400,
                               f"unknown action {target.action!r}: this model answers "
                               f":predict only")
        wanted = "POST" if target.action == "predict" else "GET"
        if method != wanted:
            raise RequestError(405, f"{target.action} takes {wanted}, not {method}")
        return target.action

    async def predict(request: Request) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request_timeout_s
        batcher: DynamicBatcher = request.state.batcher
        with batcher.incoming():
            try:
                body = await asyncio.wait_for(_read_body(request, max_body_bytes),
                                              request_timeout_s)
            except TimeoutError:
                return _error(408, f"the request body did not arrive within "
                                   f"{request_timeout_s} s")
            if len(body) > _PARSE_IN_THREAD_BYTES:
                x, row_format = await asyncio.to_thread(parse_predict, body, in_dtype,
                                                        example_shape)
            else:
                x, row_format = parse_predict(body, in_dtype, example_shape)
            try:
                outputs = await asyncio.wait_for(batcher.submit(x),
                                                 max(deadline - loop.time(), 0.0))
            except TimeoutError:
                return _error(504, f"no prediction within the request timeout of "
                                   f"{request_timeout_s} s")
            except OverloadedError as error:
                return _error(503, f"server unavailable: {error}")
        return Response(predict_answer(outputs, row_format), media_type="application/json")

    async def models(request: Request) -> Response:
        try:
            action = resolve(request.path_params["rest"], request.method)
            if action == "predict":
                return await predict(request)
        except RequestError as error:
            return _error(error.status, str(error))
        except Exception as error:  # noqa: BLE001 - the server answers and keeps serving
            logger.exception("predict failed")
            return _error(500, f"internal error: {type(error).__name__}: {error}")
        if action == "metadata":
            return _json(metadata)
        return _json(status_document(version_text))

    async def http_error(request: Request, error: HTTPException) -> Response:
        return _error(error.status_code, f"{error.detail}: {request.method} {request.url.path}; "
                                         f"the API is under /v1/models/{name}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        async with DynamicBatcher(run, policy) as batcher:
            logger.info("serving model %r version %s: input %s %s, batching %s", name,
                        version_text, tuple(in_aval.shape), in_dtype,
                        f"up to {policy.max_batch_size} rows" if policy.enabled else "off")
            yield {"batcher": batcher}

    return Starlette(routes=[Route("/v1/models/{rest:path}", models, methods=["GET", "POST"])],
                     exception_handlers={HTTPException: http_error}, lifespan=lifespan)


def serve(model_path: str | Path, *, host: str = "127.0.0.1", port: int = 8501,
          graceful_timeout_s: float = 30.0, access_log: bool = False, **app_options) -> None:
    """Serves the export at ``model_path`` until SIGINT or SIGTERM.

    On either signal the server stops accepting connections, finishes the requests in
    flight (for at most ``graceful_timeout_s``), then exits.

    Args:
      model_path: a file written by ``fnlearn.export.export_model``.
      host: the address to bind; the default is reachable from this machine only.
      port: the TCP port (TensorFlow Serving's REST port by default).
      graceful_timeout_s: the longest wait for requests in flight at shutdown.
      access_log: log every request.
      **app_options: ``create_app``'s options (name, version, policy, limits).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    app = create_app(model_path, **app_options)
    # The loaded model and JAX leave hundreds of thousands of long-lived objects; a full
    # garbage collection walking them stalled every request in flight for ~60 ms (the p99
    # of experiments/serve_benchmark.py). Frozen, they are never walked again.
    gc.freeze()
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s, log_level="info")
    uvicorn.Server(config).run()

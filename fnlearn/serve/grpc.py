"""TensorFlow Serving's gRPC API: ``PredictionService.Predict`` and ``ModelService.GetModelStatus``.

Served with ``grpcio`` through the ``tensorflow-serving-api`` servicers, on the same
models, versions and batchers as the REST API (a gRPC request and a REST request can
share one model call). A client written from TF Serving's gRPC example works unchanged::

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(...))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(images))
    outputs = tf.make_ndarray(stub.Predict(request, 10.0).outputs["outputs"])

A model with several named inputs takes one ``TensorProto`` per name in ``inputs`` (all
with the same batch size) and answers each named output in ``outputs`` (only those in
``output_filter``, if it names any).

Tensors come as ``tensor_content`` bytes or typed value fields and must have the
model's dtype exactly; outputs go back in the typed field (``float_val``...), as TF
Serving sends them. Mistakes get TF Serving's codes: ``INVALID_ARGUMENT`` (bad tensor,
input name, signature), ``NOT_FOUND`` (model, version or label), ``UNAVAILABLE``
(queue full), ``DEADLINE_EXCEEDED``, ``INTERNAL`` (a failure inside the model).
The ``tensorflow_serving`` protos import TensorFlow, so this module loads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import ml_dtypes
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from fnlearn.serve import versions
from fnlearn.serve.batching import OverloadedError
from fnlearn.serve.metrics import Metrics
from fnlearn.serve.protocol import (
    SIGNATURE_NAME,
    TF_DTYPES,
    RequestError,
    check_range,
    check_signature,
)
from fnlearn.signature import TensorInfo, batch_problem

logger = logging.getLogger("fnlearn.serve")

_DTYPES = {types_pb2.DataType.Value(tf_name): np.dtype(
    ml_dtypes.bfloat16 if name == "bfloat16" else name) for name, tf_name in TF_DTYPES.items()}
# The typed value field of each dtype (TensorProto's layout); half types travel as bits.
_FIELDS = {"float32": "float_val", "float64": "double_val", "int32": "int_val",
           "int16": "int_val", "int8": "int_val", "uint8": "int_val", "uint16": "int_val",
           "int64": "int64_val", "uint32": "uint32_val", "uint64": "uint64_val",
           "bool": "bool_val", "float16": "half_val", "bfloat16": "half_val"}
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
          405: grpc.StatusCode.INVALID_ARGUMENT, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
_ERROR_CODES = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type


def tensor_to_array(proto: tensor_pb2.TensorProto, where: str = "tensor") -> np.ndarray:
    """A ``TensorProto`` as a NumPy array of its own dtype and shape.

    Raises:
      RequestError: (400) an unsupported dtype, a bad shape, or a value count that does
        not match the shape.
    """
    if proto.dtype not in _DTYPES:
        raise RequestError(400, f"{where} has dtype {types_pb2.DataType.Name(proto.dtype)}, "
                                f"which no fnlearn model takes")
    dtype = _DTYPES[proto.dtype]
    if proto.tensor_shape.unknown_rank:
        raise RequestError(400, f"{where} has an unknown rank: give its shape")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise RequestError(400, f"{where} has shape {shape}: sizes must be >= 0")
    count = int(np.prod(shape))
    if proto.tensor_content:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise RequestError(400, f"{where}: tensor_content holds {len(proto.tensor_content)} "
                                    f"bytes; shape {shape} of {dtype} needs "
                                    f"{count * dtype.itemsize}")
        return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).astype(
            dtype).reshape(shape)
    field = _FIELDS[dtype.name]
    values = getattr(proto, field)
    if dtype.name in ("float16", "bfloat16"):
        values = np.asarray(values, np.uint16).view(dtype)
    elif dtype.kind in "iu":
        raw = np.asarray(values, np.int64 if dtype != np.uint64 else np.uint64)
        info = np.iinfo(dtype)
        if len(raw) and (raw.min() < info.min or raw.max() > info.max):
            raise RequestError(400, f"{where}: {field} holds values outside {dtype}'s range "
                                    f"[{info.min}, {info.max}]")
        values = raw
    values = np.asarray(values, dtype)
    if len(values) == 1 and count > 1:  # TF's rule: one value fills the tensor
        values = np.full(count, values[0], dtype)
    if len(values) != count:
        raise RequestError(400, f"{where}: {field} holds {len(values)} values; shape {shape} "
                                f"needs {count}")
    return values.reshape(shape)


def array_to_tensor(x: np.ndarray) -> tensor_pb2.TensorProto:
    """``x`` as a ``TensorProto`` with its values in the typed field, as TF Serving answers."""
    x = np.asarray(x)
    dtype_name = "bfloat16" if x.dtype == ml_dtypes.bfloat16 else x.dtype.name
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DataType.Value(TF_DTYPES[dtype_name]))
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in x.shape)
    flat = x.ravel()
    if dtype_name in ("float16", "bfloat16"):
        flat = flat.view(np.uint16)
    getattr(proto, _FIELDS[dtype_name]).extend(flat.tolist())
    return proto


def _checked(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """``x`` if it is a batch of ``info``'s examples, of its exact dtype, with no NaN or inf.

    Raises:
      RequestError: (400) naming the input.
    """
    if x.dtype != info.dtype:
        raise RequestError(400, f"input {info.name!r} has dtype {x.dtype}; the model takes "
                                f"{info.dtype}")
    if x.ndim < 1 or x.shape[1:] != info.shape or not len(x):
        raise RequestError(400, f"input {info.name!r} has shape {x.shape}; the model takes "
                                f"(batch, {', '.join(map(str, info.shape))}) with batch >= 1")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise RequestError(400, f"input {info.name!r} contains NaN or infinity (first at "
                                f"index {index})")
    return x


def _target(spec) -> tuple[str, str | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    version = str(spec.version.value) if choice == "version" else None
    return spec.name, version, spec.version_label if choice == "version_label" else None


class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer,
                model_service_pb2_grpc.ModelServiceServicer):
    """Answers on gRPC's threads; model lookups and batching run on the server's event loop."""

    def __init__(self, table: dict[str, versions.Model], loop: asyncio.AbstractEventLoop,
                 metrics: Metrics, request_timeout_s: float):
        self.table, self.loop, self.metrics = table, loop, metrics
        self.request_timeout_s = request_timeout_s

    def _on_loop(self, coroutine, context):
        remaining = context.time_remaining()
        timeout = min(self.request_timeout_s, remaining if remaining is not None else 1e9)
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise RequestError(504, f"no prediction within {timeout:.3g} s") from None

    async def _predict(self, target, given: dict[str, np.ndarray],
                       output_filter: list[str]) -> tuple[dict[str, np.ndarray], int]:
        servable = versions.resolve(self.table, *target)
        while True:
            signature = servable.signature
            names = list(signature.input_names)
            unknown = sorted(set(given) - set(names))
            missing = [name for name in names if name not in given]
            if unknown or missing:  # TF Serving's words for an unknown name
                problem = (f"input tensor alias not found in signature: {unknown}" if unknown
                           else f"missing input {missing}")
                raise RequestError(400, f"{problem}; the inputs expected are {names}")
            if set(output_filter) - set(signature.output_names):
                raise RequestError(400, f"output tensor alias not found in signature: "
                                        f"{sorted(output_filter)}; the outputs are "
                                        f"{list(signature.output_names)}")
            x = tuple(_checked(given[info.name], info) for info in signature.inputs)
            problem = batch_problem({name: len(a) for name, a in zip(names, x)})
            if problem is not None:
                raise RequestError(400, problem)
            check_range(x[0], f"input {names[0]!r}", servable.input_range)
            if not servable.batcher.closing:
                outputs = await servable.batcher.submit(x[0] if len(x) == 1 else x)
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                return {name: y for name, y in zip(signature.output_names, outputs)
                        if not output_filter or name in output_filter}, servable.version
            servable = versions.resolve(self.table, *target)  # a newer version took over

    def Predict(self, request, context):  # noqa: N802 - gRPC's method name
        started, code = time.perf_counter(), grpc.StatusCode.OK
        model = request.model_spec.name if request.model_spec.name in self.table else ""
        try:
            check_signature(request.model_spec.signature_name)
            given = {name: tensor_to_array(proto, f"input {name!r}")
                     for name, proto in request.inputs.items()}
            target = _target(request.model_spec)
            outputs, version = self._on_loop(
                self._predict(target, given, list(request.output_filter)), context)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = target[0]
            response.model_spec.version.value = version
            response.model_spec.signature_name = SIGNATURE_NAME
            for name, y in outputs.items():
                response.outputs[name].CopyFrom(array_to_tensor(y))
            return response
        except (RequestError, OverloadedError) as error:
            status = error.status if isinstance(error, RequestError) else 503
            code = _CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(code, str(error))
        except Exception as error:  # noqa: BLE001 - the server answers and keeps serving
            logger.exception("gRPC predict failed")
            code = grpc.StatusCode.INTERNAL
            context.abort(code, f"internal error: {type(error).__name__}: {error}")
        finally:
            self.metrics.requests.labels(model, SIGNATURE_NAME, "grpc", code.name).inc()
            self.metrics.latency.labels(model, SIGNATURE_NAME, "grpc").observe(
                time.perf_counter() - started)

    async def _status(self, target) -> list:
        return versions.status_rows(versions.find_model(self.table, target[0]), *target[1:])

    def GetModelStatus(self, request, context):  # noqa: N802 - gRPC's method name
        try:
            rows = self._on_loop(self._status(_target(request.model_spec)), context)
        except RequestError as error:
            context.abort(_CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT), str(error))
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, error_code, message in rows:
            entry = response.model_version_status.add(
                version=version, state=get_model_status_pb2.ModelVersionStatus.State.Value(state))
            entry.status.error_code = _ERROR_CODES.values_by_name[error_code].number
            entry.status.error_message = message
        return response


def start_grpc(table: dict[str, versions.Model], loop: asyncio.AbstractEventLoop,
               metrics: Metrics, *, host: str = "127.0.0.1", port: int = 8500,
               reuse_port: bool = False, request_timeout_s: float = 30.0,
               max_message_bytes: int = 16 * 2**20, threads: int = 32) -> grpc.Server:
    """Starts a gRPC server answering Predict and GetModelStatus for ``table``'s models.

    Args:
      table: the live models (``versions.load_initial``), read on ``loop``.
      loop: the event loop running the models' batchers.
      metrics: where requests are counted.
      host, port: the address to bind.
      reuse_port: share the port with other worker processes (SO_REUSEPORT).
      request_timeout_s: the longest a request waits for its prediction.
      max_message_bytes: larger requests are refused (RESOURCE_EXHAUSTED).
      threads: requests handled at once.

    Returns:
      The started ``grpc.Server``; ``stop(grace)`` ends it.

    Raises:
      OSError: the port cannot be bound.
    """
    server = grpc.server(ThreadPoolExecutor(threads, thread_name_prefix="fnlearn-grpc"),
                         options=[("grpc.so_reuseport", int(reuse_port)),
                                  ("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", -1)])
    servicer = _Servicer(table, loop, metrics, request_timeout_s)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as error:
        raise OSError(f"cannot bind gRPC to {host}:{port}: {error}") from None
    if not bound:
        raise OSError(f"cannot bind gRPC to {host}:{port}: the port is in use")
    server.start()
    logger.info("gRPC listening on %s:%d", host, bound)
    return server

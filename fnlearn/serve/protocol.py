"""TensorFlow Serving's REST API as pure functions: paths, request bodies, answers.

A predict request is ``{"instances": [...]}`` (row format: one entry per example)
or ``{"inputs": ...}`` (columnar: the whole batch as one tensor); the answer is
``{"predictions": [...]}`` or ``{"outputs": ...}`` respectively. Either may name
the input, as TF Serving clients of a SavedModel exported by
``fnlearn.export.export_saved_model`` do: ``{"instances": [{"inputs": ...}]}``,
``{"inputs": {"inputs": ...}}``. Every mistake in a request is a ``RequestError``
carrying the HTTP status and a message saying what to send instead.

A model with several named inputs (``fnlearn.signature``) takes them as TF Serving
takes a multi-input signature's: ``{"instances": [{"image": ..., "meta": ...}, ...]}``
or ``{"inputs": {"image": [...], "meta": [...]}}``; with several outputs the answer
names them: ``{"predictions": [{"digit": ..., "size": ...}, ...]}`` or
``{"outputs": {"digit": [...], "size": [...]}}``.

Where TF Serving's spec leaves a choice, the choices are: ``"signature_name": ""``
means the default signature; unknown top-level keys are ignored; integers that the
model's float dtype cannot hold exactly (``16777217`` for float32) are refused, as TF
Serving refuses them; ``NaN`` and ``Infinity`` are valid JSON per the spec but refused,
since no model output computed from them means anything (the error names the first one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fnlearn.signature import (
    INPUT_NAME,
    OUTPUT_NAME,
    ServingSignature,
    TensorInfo,
    batch_problem,
    name_problem,
)

#: The one signature an exported model has, as TF Serving names its default.
SIGNATURE_NAME = "serving_default"

_PATH = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?::(?P<verb>[^/:]+)|/(?P<tail>metadata))?")

TF_DTYPES = {"float16": "DT_HALF", "bfloat16": "DT_BFLOAT16", "float32": "DT_FLOAT",
              "float64": "DT_DOUBLE", "int8": "DT_INT8", "int16": "DT_INT16", "int32": "DT_INT32",
              "int64": "DT_INT64", "uint8": "DT_UINT8", "uint16": "DT_UINT16",
              "uint32": "DT_UINT32", "uint64": "DT_UINT64", "bool": "DT_BOOL"}


class RequestError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Target:
    """What a ``/v1/models/...`` path asks for: a model, a version or label, and an action."""

    name: str
    version: str | None
    label: str | None
    action: str  # "status", "metadata" or a verb such as "predict"


def parse_path(rest: str) -> Target:
    """Parses the part of a path after ``/v1/models/``.

    Raises:
      RequestError: (404) the path is not one of TF Serving's model paths.
    """
    match = _PATH.fullmatch(rest)
    if not match:
        raise RequestError(404, f"no such path: /v1/models/{rest}; use /v1/models/NAME, "
                                f"/v1/models/NAME/metadata or /v1/models/NAME:predict")
    action = match["verb"] or match["tail"] or "status"
    return Target(match["name"], match["version"], match["label"], action)


def _tensor(value, where: str, dtype: np.dtype, example_shape: tuple[int, ...]) -> np.ndarray:
    try:
        x = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as error:
        raise RequestError(400, f"{where} is not a rectangular array of numbers (ragged "
                                f"nesting or mixed types): every example must have shape "
                                f"{example_shape}") from error
    if x.dtype.kind in "OUS":
        what = "text" if x.dtype.kind in "US" else "null, objects or numbers too large"
        raise RequestError(400, f"{where} holds {what}: the model takes numbers of dtype {dtype}")
    if x.ndim >= 1 and x.shape[0] == 0:
        raise RequestError(400, f"{where} is empty: send at least one example")
    if x.ndim == 0 or x.shape[1:] != example_shape:
        got = "a single number" if x.ndim == 0 else f"examples of shape {x.shape[1:]}"
        raise RequestError(400, f"{where} has shape {x.shape} ({got}); the model takes "
                                f"examples of shape {example_shape}, batch shape "
                                f"(batch, {', '.join(map(str, example_shape))})")
    return _cast(x, where, dtype)


def _cast(x: np.ndarray, where: str, dtype: np.dtype) -> np.ndarray:
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise RequestError(400, f"{where} contains NaN or infinity (first at index {index}): "
                                f"the model's answer to it would mean nothing")
    if dtype == np.bool_:
        if x.dtype != np.bool_:
            raise RequestError(400, f"{where} holds {x.dtype.name} numbers; the model takes "
                                    "booleans (true/false)")
        return x
    if x.dtype == np.bool_:
        raise RequestError(400, f"{where} holds booleans; the model takes numbers of "
                                f"dtype {dtype}")
    if np.issubdtype(dtype, np.integer):
        if x.dtype.kind == "f":
            raise RequestError(400, f"{where} holds non-integer numbers; the model takes "
                                    f"{dtype}: send integers")
        info = np.iinfo(dtype)
        low, high = x.min(), x.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise RequestError(400, f"{where} holds {bad}, outside the range of the model's "
                                    f"dtype {dtype} [{info.min}, {info.max}]")
        return x.astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = x.astype(dtype)
    if not np.isfinite(cast).all():
        raise RequestError(400, f"{where} holds numbers too large for the model's dtype {dtype}")
    # Integers must arrive exactly: 16777217 would silently become 16777216.0 in float32.
    with np.errstate(over="ignore", invalid="ignore"):
        changed = (cast.astype(np.float64) != x) & (x == np.round(x))
    if changed.any():
        index = tuple(int(i) for i in np.argwhere(changed)[0])
        value = x[index]
        value = int(value) if x.dtype.kind in "iu" else value
        raise RequestError(400, f"{where} holds the integer {value} at index {index}, which "
                                f"the model's dtype {dtype} cannot represent exactly (it would "
                                f"become {cast[index].item()!r})")
    return cast


def check_signature(signature) -> None:
    """Refuses a signature name other than the default (``""`` means the default).

    Raises:
      RequestError: (400) another signature is named.
    """
    if signature not in ("", SIGNATURE_NAME):
        raise RequestError(400, f"unknown signature_name {signature!r}; the model has one, "
                                f"{SIGNATURE_NAME!r}")


def check_tensor(x: np.ndarray, where: str, dtype: np.dtype,
                 example_shape: tuple[int, ...]) -> np.ndarray:
    """``x`` checked against the model's per-example shape and cast exactly to ``dtype``.

    Raises:
      RequestError: (400) the shape does not fit, or a value would change in ``dtype``.
    """
    return _tensor(x, where, dtype, example_shape)


def check_range(x: np.ndarray, where: str, input_range) -> None:
    """Refuses values outside the export's ``input_range`` (``[low, high]`` or None).

    Raises:
      RequestError: (400) naming the first value outside.
    """
    if input_range is None:
        return
    outside = (x < input_range[0]) | (x > input_range[1])
    if outside.any():
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        raise RequestError(400, f"{where} holds {x[index].item()!r} at index {index}, outside "
                                f"the model's input range [{input_range[0]}, {input_range[1]}]")


def _named(value, where: str, name: str = INPUT_NAME):
    """The tensor of a ``{name: tensor}`` object, or the value itself if not an object."""
    if not isinstance(value, dict):
        return value
    if set(value) != {name}:
        raise RequestError(400, f"{where} names inputs {sorted(value)}; the model has one "
                                f"input, {name!r}")
    return value[name]


def parse_predict(body: bytes, dtype: np.dtype,
                  example_shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """Reads a predict request body into a batch for a model with one input.

    Args:
      body: the raw request body (JSON).
      dtype: the model's input dtype; values are checked to fit it exactly.
      example_shape: the model's per-example input shape.

    Returns:
      ``(x, row_format)``: the batch, and whether the request used ``instances``.

    Raises:
      RequestError: (400) the body is not JSON, not of TF Serving's form, or does not fit.
    """
    (x,), row_format = parse_request(body, (TensorInfo(INPUT_NAME, example_shape, dtype),))
    return x, row_format


def _request_object(body: bytes) -> dict:
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise RequestError(400, f"the request body is not valid JSON: {reason}") from None
    if not isinstance(request, dict):
        raise RequestError(400, 'the request body must be a JSON object: {"instances": [...]} '
                                'or {"inputs": ...}')
    check_signature(request.get("signature_name", ""))
    if ("instances" in request) == ("inputs" in request):
        # Other keys are ignored, as TF Serving ignores them; they are named to help.
        unknown = sorted(set(request) - {"instances", "inputs", "signature_name"})
        raise RequestError(400, 'the request must have exactly one of "instances" (row format) '
                                'or "inputs" (columnar format)'
                                + (f"; other keys {unknown} are ignored" if unknown else ""))
    if "instances" in request and not isinstance(request["instances"], list):
        raise RequestError(400, '"instances" must be a list with one entry per example')
    return request


def parse_request(body: bytes,
                  inputs: Sequence[TensorInfo]) -> tuple[tuple[np.ndarray, ...], bool]:
    """Reads a predict request body into one batch per named input of the model.

    Args:
      body: the raw request body (JSON).
      inputs: the model's inputs (``ServingSignature.inputs``); each value is checked to
        fit its input's per-example shape and dtype exactly.

    Returns:
      ``(arrays, row_format)``: one batch per input, in ``inputs``' order, and whether
      the request used ``instances``.

    Raises:
      RequestError: (400) the body is not JSON, not of TF Serving's form, names inputs
        the model lacks or lacks some, or does not fit (the message names the input).
    """
    request = _request_object(body)
    if len(inputs) == 1:
        (info,) = inputs
        if "inputs" in request:
            value = _named(request["inputs"], '"inputs"', info.name)
            return (_tensor(value, '"inputs"', info.dtype, info.shape),), False
        instances = request["instances"]
        if instances and isinstance(instances[0], dict):
            instances = [_named(item, f'"instances"[{i}]', info.name)
                         for i, item in enumerate(instances)]
        return (_tensor(instances, '"instances"', info.dtype, info.shape),), True
    names = [info.name for info in inputs]
    if "inputs" in request:
        columns = _by_name(request["inputs"], '"inputs"', names)
        arrays = tuple(_tensor(columns[info.name], f"input {info.name!r}", info.dtype,
                               info.shape) for info in inputs)
        problem = batch_problem({name: len(x) for name, x in zip(names, arrays)})
        if problem is not None:
            raise RequestError(400, problem)
        return arrays, False
    instances = request["instances"]
    if not instances:
        raise RequestError(400, '"instances" is empty: send at least one example')
    rows = [_by_name(item, f'"instances"[{i}]', names) for i, item in enumerate(instances)]
    return tuple(_tensor([row[info.name] for row in rows], f"input {info.name!r}", info.dtype,
                         info.shape) for info in inputs), True


def _by_name(value, where: str, names: list[str]) -> dict:
    if not isinstance(value, dict):
        example = ", ".join(f'"{name}": ...' for name in names)
        raise RequestError(400, f"{where} must be an object naming the model's inputs {names}: "
                                f"{{{example}}}")
    problem = name_problem(list(value), names)
    if problem is not None:
        raise RequestError(400, f"{where}: {problem}")
    return value


def predict_answer(outputs: np.ndarray | dict[str, np.ndarray], row_format: bool) -> bytes:
    """The JSON answer to a predict request: ``predictions`` (row) or ``outputs`` (columnar).

    ``outputs`` is the model's one output, or a dict of its named outputs: the answer
    then names them, ``{"predictions": [{name: ...}, ...]}`` or ``{"outputs": {name: ...}}``.
    Floats are written as the shortest decimal of their double value, so parsing them
    back and casting to the output dtype restores the exact bits.
    """
    if isinstance(outputs, dict):
        columns = {name: y.tolist() for name, y in outputs.items()}
        value = ([dict(zip(columns, row)) for row in zip(*columns.values())] if row_format
                 else columns)
    else:
        value = outputs.tolist()
    return json.dumps({"predictions" if row_format else OUTPUT_NAME: value},
                      separators=(",", ":")).encode()


def _tensor_info(shape: tuple, dtype: np.dtype, name: str) -> dict:
    dims = [{"size": str(d) if isinstance(d, int) else "-1", "name": ""} for d in shape]
    return {"dtype": TF_DTYPES.get(np.dtype(dtype).name, "DT_INVALID"),
            "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": name}


def status_document(rows) -> dict:
    """``GET /v1/models/NAME``: each version's state, as TF Serving reports it.

    Args:
      rows: ``(version, state, error_code, error_message)`` per version, e.g.
        ``(2, "AVAILABLE", "OK", "")``; states are TF Serving's ``START``, ``LOADING``,
        ``AVAILABLE``, ``UNLOADING`` and ``END``.
    """
    return {"model_version_status": [
        {"version": str(version), "state": state,
         "status": {"error_code": code, "error_message": message}}
        for version, state, code, message in rows]}


def metadata_document(name: str, version: str, signature: ServingSignature,
                      meta: dict) -> dict:
    """``GET /v1/models/NAME/metadata``: the serving signature as TF Serving describes one.

    Every named input and output; shapes have the batch axis first, ``-1`` for any size.
    ``fnlearn`` holds the export's own ``meta.json``.
    """
    signature = {"inputs": {info.name: _tensor_info((None, *info.shape), info.dtype,
                                                    f"{SIGNATURE_NAME}_{info.name}:0")
                            for info in signature.inputs},
                 "outputs": {info.name: _tensor_info((None, *info.shape), info.dtype,
                                                     f"{info.name}:0")
                             for info in signature.outputs},
                 "method_name": "tensorflow/serving/predict"}
    return {"model_spec": {"name": name, "signature_name": "", "version": version},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE_NAME: signature}}},
            "fnlearn": meta}

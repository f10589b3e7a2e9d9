"""TF Serving's gRPC API through the ``tensorflow-serving-api`` stubs, as its examples use them.

Skipped when grpcio or tensorflow-serving-api is missing; with ``FNLEARN_REQUIRE_SERVE=1``
(CI sets it) a missing one is a failure instead.
"""

from __future__ import annotations

import importlib
import os

import ml_dtypes
import numpy as np
import pytest
from test_serve_http import Server

import fnlearn
from fnlearn import nn
from fnlearn.export import export_model


def _require(*modules: str) -> None:
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as error:
        reason = f"gRPC needs {error.name}; pip install -e '.[serve]'"
        if os.environ.get("FNLEARN_REQUIRE_SERVE") == "1":
            pytest.fail(f"FNLEARN_REQUIRE_SERVE=1 but {reason}", pytrace=False)
        pytest.skip(reason)


_require("grpc", "tensorflow_serving.apis.predict_pb2")

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from fnlearn.serve.grpc import array_to_tensor, tensor_to_array  # noqa: E402
from fnlearn.serve.protocol import RequestError  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Version 3 of an MNIST MLP under a base path, served with gRPC; 64 images, and the
    answers ``fnlearn.predict`` gives for rows padded as the server pads them."""
    model = nn.serial(nn.Normalize(0, 255), nn.Flatten(), nn.Dense(32, "relu"),
                      nn.Dense(10, "softmax"))
    params = nn.init(model, 0, (28, 28))
    base = tmp_path_factory.mktemp("grpc") / "mnist"
    export_model(model, params, (28, 28), np.uint8, base / "3" / "model.fnx", platforms=("cpu",))
    x = np.random.default_rng(0).integers(0, 256, size=(64, 28, 28), dtype=np.uint8)
    server = Server("--model_base_path", base, "--model_name", "mnist", "--version_labels",
                    "stable=3", grpc=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")

    def as_served(rows: np.ndarray) -> np.ndarray:  # padded as the server pads: 32, 64 rows
        size = 32 if len(rows) <= 32 else 64
        padded = np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)])
        return fnlearn.predict(model, params, padded)[:len(rows)]

    yield channel, x, as_served
    channel.close()
    server.stop()


def _request(x, name="mnist", **spec) -> predict_pb2.PredictRequest:
    """A PredictRequest as TF Serving's example client builds one."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = spec.pop("signature_name", "serving_default")
    if "version" in spec:
        request.model_spec.version.value = spec.pop("version")
    if "label" in spec:
        request.model_spec.version_label = spec.pop("label")
    request.inputs[spec.pop("input_name", "inputs")].CopyFrom(tf.make_tensor_proto(x))
    return request


def test_predict_equals_fnlearn_predict_bit_for_bit(served):
    channel, x, as_served = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    result = stub.Predict(_request(x), 10.0)
    assert np.array_equal(tf.make_ndarray(result.outputs["outputs"]), as_served(x))
    assert (result.model_spec.name, result.model_spec.version.value) == ("mnist", 3)
    # The typed field, as TF Serving's own example reads it: outputs["outputs"].float_val
    single = stub.Predict(_request(x[5:6], version=3), 10.0).outputs["outputs"]
    assert np.array_equal(np.float32(single.float_val), as_served(x[5:6])[0])
    by_label = stub.Predict(_request(x[:40], label="stable"), 10.0).outputs["outputs"]
    assert np.array_equal(tf.make_ndarray(by_label), as_served(x[:40]))


def test_model_status(served):
    channel, *_ = served
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "mnist"
    (status,) = stub.GetModelStatus(request, 10.0).model_version_status
    assert (status.version, status.state, status.status.error_code) == (
        3, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)
    request.model_spec.version.value = 9
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelStatus(request, 10.0)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


BAD = [
    ("unknown model", dict(name="resnet"), grpc.StatusCode.NOT_FOUND,
     "model 'resnet' is not served here; this server serves 'mnist'"),
    ("unknown version", dict(version=2), grpc.StatusCode.NOT_FOUND,
     "model 'mnist' has no version '2'; it serves version 3"),
    ("unknown label", dict(label="canary"), grpc.StatusCode.NOT_FOUND,
     "model 'mnist' has no label 'canary'; its labels: stable -> 3"),
    ("unknown signature", dict(signature_name="classify"), grpc.StatusCode.INVALID_ARGUMENT,
     "unknown signature_name 'classify'"),
    ("wrong input name", dict(input_name="images"), grpc.StatusCode.INVALID_ARGUMENT,
     "input tensor alias not found in signature: ['images']"),
    ("float pixels", dict(x=np.zeros((1, 28, 28), np.float32)),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'inputs' has dtype float32; the model takes uint8"),
    ("wrong shape", dict(x=np.zeros((1, 784), np.uint8)), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'inputs' has shape (1, 784); the model takes (batch, 28, 28)"),
]


@pytest.mark.parametrize("change, code, message", [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_requests_get_tf_servings_status_codes(served, change, code, message):
    channel, x, as_served = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(_request(change.pop("x", x[:1]), **change), 10.0)
    assert error.value.code() == code and message in error.value.details()
    assert np.array_equal(tf.make_ndarray(stub.Predict(_request(x[:2]), 10.0)
                                          .outputs["outputs"]), as_served(x[:2]))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "uint8", "int16", "uint16",
                                   "int32", "int64", "uint32", "uint64", "bool", "float16",
                                   "bfloat16"])
def test_tensors_round_trip_through_both_encodings(dtype):
    dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    x = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    assert tensor_to_array(array_to_tensor(x)).dtype == dtype
    assert np.array_equal(tensor_to_array(array_to_tensor(x)), x)  # typed field
    if dtype != ml_dtypes.bfloat16:  # tf.make_tensor_proto writes tensor_content
        assert np.array_equal(tensor_to_array(tf.make_tensor_proto(x)), x)
        assert np.array_equal(tf.make_ndarray(array_to_tensor(x)), x)


def test_malformed_tensors_are_refused_by_name():
    proto = tf.make_tensor_proto(np.zeros((2, 3), np.float32))
    proto.tensor_content = proto.tensor_content[:-4]
    with pytest.raises(RequestError, match="tensor_content holds 20 bytes; shape \\(2, 3\\) of "
                                           "float32 needs 24"):
        tensor_to_array(proto)
    with pytest.raises(RequestError, match="dtype DT_STRING"):
        tensor_to_array(tf.make_tensor_proto(np.array([b"a"])))
    proto = array_to_tensor(np.zeros((2, 2), np.int32))
    proto.dtype = tf.uint8.as_datatype_enum
    proto.int_val[0] = 300
    with pytest.raises(RequestError, match="outside uint8's range"):
        tensor_to_array(proto)

"""A model with two named inputs and two named outputs, served over REST and gRPC.

The server runs as a subprocess on loopback (``test_serve_http.Server``); requests are in
TF Serving's formats for a multi-input signature.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from test_export_named import SHAPES, heads_data, two_heads
from test_serve_http import Server

import fnlearn as fl
from fnlearn import nn
from fnlearn.export import export_model
from fnlearn.serve.batching import BatchPolicy, DynamicBatcher
from fnlearn.serve.protocol import RequestError, parse_request, predict_answer
from fnlearn.signature import TensorInfo

PREDICT = "/v1/models/heads:predict"
HAS_GRPC = all(importlib.util.find_spec(m) is not None for m in ("grpc", "tensorflow_serving"))


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """The two-head model's export served (gRPC too where it is installed), 64 rows of
    inputs and ``fnlearn.predict``'s answers to them."""
    model = two_heads()
    params = nn.init(model, 0, SHAPES)
    path = export_model(model, params, SHAPES, np.float32,
                        tmp_path_factory.mktemp("named") / "heads.fnx", platforms=("cpu",))
    x = heads_data(64)
    # 64 rows: one batch in the regime of the server's padded sizes (32, 64), as
    # test_serve_http's fixture explains.
    server = Server(path, "--model_name", "heads", "--batch-timeout-ms", "5", grpc=HAS_GRPC,
                    model="heads")
    yield server, x, fl.predict(model, params, x)
    server.stop()


def rows(x: dict, index) -> dict:
    return {name: value[index] for name, value in x.items()}


def post(server, body: dict):
    return server.request("POST", PREDICT, json.dumps(body).encode())


def test_metadata_lists_every_input_and_output(heads):
    server, *_ = heads
    status, metadata = server.request("GET", "/v1/models/heads/metadata")
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    shapes = {kind: {name: ([d["size"] for d in info["tensor_shape"]["dim"]], info["dtype"])
                     for name, info in signature[kind].items()} for kind in ("inputs", "outputs")}
    assert status == 200 and shapes == {
        "inputs": {"image": (["-1", "4", "4"], "DT_FLOAT"), "meta": (["-1", "3"], "DT_FLOAT")},
        "outputs": {"digit": (["-1", "3"], "DT_FLOAT"), "size": (["-1", "1"], "DT_FLOAT")}}


def test_row_and_columnar_formats_answer_named_outputs_bit_for_bit(heads):
    server, x, expected = heads
    instances = [{"image": image, "meta": meta}
                 for image, meta in zip(x["image"].tolist(), x["meta"].tolist())]
    status, answer = post(server, {"instances": instances[:40]})
    assert status == 200 and list(answer) == ["predictions"] and len(answer["predictions"]) == 40
    assert list(answer["predictions"][0]) == ["digit", "size"]
    for name in ("digit", "size"):
        got = np.float32([row[name] for row in answer["predictions"]])
        assert np.array_equal(got, expected[name][:40])
    status, answer = post(server, {"inputs": {name: value[40:].tolist()
                                              for name, value in x.items()}})
    assert status == 200 and list(answer) == ["outputs"]
    assert sorted(answer["outputs"]) == ["digit", "size"]
    for name in ("digit", "size"):
        assert np.array_equal(np.float32(answer["outputs"][name]), expected[name][40:])


def test_concurrent_multi_input_requests_each_get_their_own_rows(heads):
    server, x, expected = heads
    # 36 requests of 1 to 3 distinct rows from 12 threads at once, merged by the batcher.
    slices = [slice(i % 61, i % 61 + 1 + i % 3) for i in range(36)]

    def ask(rows_wanted):
        status, answer = post(server, {"inputs": {name: value.tolist()
                                                  for name, value in rows(x, rows_wanted).items()}})
        assert status == 200, answer
        return answer["outputs"]

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, slices))
    for wanted, answer in zip(slices, answers):
        for name in ("digit", "size"):
            assert np.array_equal(np.float32(answer[name]), expected[name][wanted])


BAD = [
    ("missing name", {"inputs": {"image": [[[0.0] * 4] * 4]}},
     "\"inputs\": missing input 'meta'; the model takes inputs ['image', 'meta']"),
    ("unknown name", {"inputs": {"image": [[[0.0] * 4] * 4], "meta": [[0.0] * 3],
                                 "extra": [1]}},
     "\"inputs\": unknown input 'extra'; the model takes inputs ['image', 'meta']"),
    ("missing name in a row", {"instances": [{"image": [[0.0] * 4] * 4, "meta": [0.0] * 3},
                                             {"image": [[0.0] * 4] * 4}]},
     "\"instances\"[1]: missing input 'meta'"),
    ("batch sizes disagree", {"inputs": {"image": [[[0.0] * 4] * 4] * 2, "meta": [[0.0] * 3]}},
     "input 'meta' has 1 examples but input 'image' has 2: every input must have the same "
     "batch size"),
    ("one input's shape", {"instances": [{"image": [[0.0] * 4] * 4, "meta": [0.0] * 4}]},
     "input 'meta' has shape (1, 4) (examples of shape (4,)); the model takes examples of "
     "shape (3,)"),
    ("one input's dtype", {"inputs": {"image": [[["a"] * 4] * 4], "meta": [[0.0] * 3]}},
     "input 'image' holds text: the model takes numbers of dtype float32"),
    ("rows not named", {"instances": [[0.0] * 3]},
     "\"instances\"[0] must be an object naming the model's inputs ['image', 'meta']"),
    ("columns not named", {"inputs": [[0.0] * 3]},
     "\"inputs\" must be an object naming the model's inputs ['image', 'meta']"),
]


@pytest.mark.parametrize("body, message", [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_bad_named_inputs_are_400_naming_the_input_and_serving_goes_on(heads, body, message):
    server, x, expected = heads
    status, answer = post(server, body)
    assert status == 400 and message in answer["error"], answer
    status, good = post(server, {"inputs": {name: value[:3].tolist()
                                            for name, value in x.items()}})
    assert status == 200 and np.array_equal(np.float32(good["outputs"]["size"]),
                                            expected["size"][:3])


def test_metrics_count_multi_input_requests(heads):
    from prometheus_client.parser import text_string_to_metric_families

    server, x, _ = heads

    def count(status: str) -> float:
        text = server.request_text("GET", "/monitoring/prometheus/metrics")[1]
        return sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples if s.name == "fnlearn_serve_requests_total"
                   and s.labels == {"model": "heads", "signature": "serving_default",
                                    "protocol": "rest", "status": status})

    before = count("200"), count("400")
    post(server, {"inputs": {name: value[:2].tolist() for name, value in x.items()}})
    post(server, {"inputs": {"image": x["image"][:2].tolist()}})
    assert (count("200"), count("400")) == (before[0] + 1, before[1] + 1)


def test_grpc_predict_takes_and_answers_every_named_tensor(heads):
    if not HAS_GRPC:
        pytest.skip("gRPC needs grpcio and tensorflow-serving-api")
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    server, x, expected = heads

    def request(inputs: dict, output_filter=()) -> predict_pb2.PredictRequest:
        message = predict_pb2.PredictRequest()
        message.model_spec.name = "heads"
        for name, value in inputs.items():
            message.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        message.output_filter.extend(output_filter)
        return message

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        result = stub.Predict(request(rows(x, slice(0, 40))), 10.0)
        assert sorted(result.outputs) == ["digit", "size"]
        for name in ("digit", "size"):
            assert np.array_equal(tf.make_ndarray(result.outputs[name]), expected[name][:40])
        only = stub.Predict(request(rows(x, slice(40, 64)), ["size"]), 10.0)
        assert list(only.outputs) == ["size"]
        assert np.array_equal(tf.make_ndarray(only.outputs["size"]), expected["size"][40:])
        for inputs, message in [
                ({"image": x["image"][:2]}, "missing input ['meta']; the inputs expected are "
                                            "['image', 'meta']"),
                ({**rows(x, slice(0, 2)), "extra": x["meta"][:2]},
                 "input tensor alias not found in signature: ['extra']"),
                ({"image": x["image"][:2], "meta": x["meta"][:1]},
                 "input 'meta' has 1 examples but input 'image' has 2"),
                ({"image": x["image"][:2], "meta": x["meta"][:2, :2]},
                 "input 'meta' has shape (2, 2); the model takes (batch, 3)")]:
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request(inputs), 10.0)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in error.value.details()


def test_the_batcher_merges_tuples_of_inputs_and_splits_tuples_of_outputs():
    calls = []

    def fn(batch):  # two inputs in, two outputs out
        calls.append(tuple(a.shape for a in batch))
        return batch[0] * 10, batch[1].sum(axis=1, keepdims=True)

    rng = np.random.default_rng(0)
    requests = [(rng.normal(size=(n, 3)), rng.normal(size=(n, 2))) for n in (1, 3, 2, 4, 1) * 6]
    policy = BatchPolicy(max_batch_size=32, timeout_s=0.005, batch_sizes=(8, 32))

    async def scenario():
        async with DynamicBatcher(fn, policy) as batcher:
            return await asyncio.gather(*(batcher.submit(r) for r in requests))

    answers = asyncio.run(scenario())
    for (a, b), (ten_a, sum_b) in zip(requests, answers):
        assert np.array_equal(ten_a, a * 10) and np.array_equal(sum_b, b.sum(1, keepdims=True))
    assert len(calls) < len(requests)  # merged: 30 requests in fewer calls
    assert all(shape[0][0] in (8, 32) and shape[0][0] == shape[1][0] for shape in calls)


def test_parse_request_and_answer_as_pure_functions():
    inputs = (TensorInfo("input_0", (2,), np.dtype(np.float32)),
              TensorInfo("input_1", (), np.dtype(np.int32)))
    arrays, row_format = parse_request(json.dumps(
        {"instances": [{"input_0": [1, 2], "input_1": 3}, {"input_0": [4, 5], "input_1": 6}]}
    ).encode(), inputs)
    assert row_format and arrays[0].dtype == np.float32 and arrays[1].tolist() == [3, 6]
    with pytest.raises(RequestError, match=r"\"instances\" is empty"):
        parse_request(b'{"instances": []}', inputs)
    answer = json.loads(predict_answer({"a": np.float32([[0.1], [0.2]]), "b": np.int32([1, 2])},
                                       row_format=True))
    assert answer == {"predictions": [{"a": [np.float32(0.1).item()], "b": 1},
                                      {"a": [np.float32(0.2).item()], "b": 2}]}
    assert json.loads(predict_answer({"b": np.int32([1, 2])}, row_format=False)) == {
        "outputs": {"b": [1, 2]}}

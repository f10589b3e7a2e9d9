"""The dynamic batcher and TF Serving's request format, without HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import numpy as np
import pytest

from fnlearn.serve.batching import (
    BatchPolicy,
    DynamicBatcher,
    OverloadedError,
    default_batch_sizes,
    padded_size,
    run_padded,
    split_rows,
)
from fnlearn.serve.protocol import RequestError, parse_path, parse_predict, predict_answer


class Recorder:
    """A batched function that records the shape of every call; output row = 10 * input row."""

    def __init__(self, delay_s: float = 0.0):
        self.shapes: list[tuple[int, ...]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.shapes.append(x.shape)
        time.sleep(self.delay_s)
        return x * 10


def test_default_batch_sizes_and_padding_choice():
    assert default_batch_sizes(128) == (32, 64, 128)
    assert default_batch_sizes(100) == (32, 64, 100)
    assert default_batch_sizes(8) == (8,)
    assert [padded_size(n, (32, 64, 128)) for n in (1, 32, 33, 128, 500)] == [32, 32, 64, 128, 128]


def test_run_padded_calls_only_fixed_sizes_and_returns_exactly_the_rows():
    fn = Recorder()
    x = np.arange(300, dtype=np.float32).reshape(150, 2)
    out = run_padded(fn, x, (4, 16, 64))
    assert np.array_equal(out, x * 10)
    assert fn.shapes == [(64, 2), (64, 2), (64, 2)]  # 64 + 64 + 22 padded to 64


def test_split_rows_and_its_check():
    parts = split_rows(np.arange(6), [1, 3, 2])
    assert [p.tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]
    with pytest.raises(ValueError, match=r"6 output rows cannot be split into \[1, 2\]"):
        split_rows(np.arange(6), [1, 2])


@pytest.mark.parametrize("options, message", [
    ({"max_batch_size": 0}, "max_batch_size must be a positive int"),
    ({"batch_sizes": (64, 32)}, "ascending"),
    ({"max_batch_size": 64, "batch_sizes": (16, 32)}, "largest batch size 32 is below"),
    ({"timeout_s": -1.0}, "timeout_s must be >= 0"),
    ({"max_queued": 0}, "max_queued must be a positive int"),
])
def test_policy_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        BatchPolicy(**options)


async def _submit_all(batcher: DynamicBatcher, requests: list[np.ndarray]) -> list[np.ndarray]:
    return await asyncio.gather(*(batcher.submit(r) for r in requests))


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows():
    fn = Recorder(delay_s=0.01)
    rng = np.random.default_rng(0)
    requests = [rng.normal(size=(int(rng.integers(1, 5)), 3)).astype(np.float32)
                for _ in range(60)]
    policy = BatchPolicy(max_batch_size=32, timeout_s=0.005, batch_sizes=(8, 32))

    async def scenario():
        async with DynamicBatcher(fn, policy) as batcher:
            answers = await _submit_all(batcher, requests)
            return answers, batcher.calls

    answers, calls = asyncio.run(scenario())
    for request, answer in zip(requests, answers):
        assert np.array_equal(answer, request * 10)
    assert calls == len(fn.shapes) <= 10  # 60 requests of ~150 rows in a handful of calls
    assert all(shape[0] in (8, 32) for shape in fn.shapes)


def test_metrics_hooks_see_every_call_and_the_queue():
    calls, depths = [], []
    policy = BatchPolicy(max_batch_size=8, timeout_s=0.05, batch_sizes=(8,))
    requests = [np.full((3, 2), i, np.float32) for i in range(4)] + [np.zeros((20, 2),
                                                                              np.float32)]

    async def scenario():
        async with DynamicBatcher(Recorder(), policy, on_call=calls.append,
                                  on_queue=depths.append) as batcher:
            return await _submit_all(batcher, requests)

    asyncio.run(scenario())
    assert sum(calls) == 32 and max(calls) == 8  # rows before padding, the 20 in chunks
    assert max(depths) >= 2 and depths[-1] == 0


def test_without_batching_every_request_is_its_own_call():
    fn = Recorder()
    requests = [np.full((2, 3), i, np.float32) for i in range(10)]

    async def scenario():
        async with DynamicBatcher(fn, BatchPolicy(enabled=False, max_batch_size=8)) as batcher:
            return await _submit_all(batcher, requests)

    answers = asyncio.run(scenario())
    assert [a[0, 0] for a in answers] == [10.0 * i for i in range(10)]
    assert fn.shapes == [(8, 3)] * 10


def test_a_batch_waits_for_requests_still_being_read_but_never_for_nobody():
    fn = Recorder()
    x = np.ones((1, 2), np.float32)

    async def elapsed(announced_elsewhere: int, leave_after_s: float | None = None) -> float:
        async with DynamicBatcher(fn, BatchPolicy(max_batch_size=32, timeout_s=1.0)) as batcher:
            others = contextlib.ExitStack()
            for _ in range(announced_elsewhere):
                others.enter_context(batcher.incoming())
            if leave_after_s is not None:
                asyncio.get_running_loop().call_later(leave_after_s, others.close)
            start = time.perf_counter()
            with batcher.incoming():
                await batcher.submit(x)
            others.close()
            return time.perf_counter() - start

    assert asyncio.run(elapsed(0)) < 0.5  # alone: no wait
    assert 1.0 <= asyncio.run(elapsed(1)) < 2.0  # another request never arrives: the timeout
    assert 0.2 <= asyncio.run(elapsed(1, leave_after_s=0.2)) < 0.8  # it left: wait no longer


def test_a_timed_out_request_is_dropped_and_the_next_is_served():
    fn = Recorder(delay_s=0.3)

    async def scenario():
        async with DynamicBatcher(fn, BatchPolicy(max_batch_size=4, timeout_s=0.0,
                                                  batch_sizes=(4,))) as batcher:
            slow = asyncio.ensure_future(batcher.submit(np.full((1, 1), 1.0)))
            await asyncio.sleep(0.05)  # the first call is running now
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(batcher.submit(np.full((1, 1), 2.0)), 0.1)
            late = await batcher.submit(np.full((1, 1), 3.0))
            return await slow, late

    first, late = asyncio.run(scenario())
    assert first[0, 0] == 10.0 and late[0, 0] == 30.0
    assert len(fn.shapes) == 2  # the timed-out request never reached the model


def test_errors_of_the_function_reach_every_request_of_the_batch_and_serving_goes_on():
    def fails_on_negative(x):
        if (x < 0).any():
            raise FloatingPointError("negative input")
        return x

    async def scenario():
        async with DynamicBatcher(fails_on_negative, BatchPolicy(max_batch_size=4,
                                                                 batch_sizes=(4,))) as batcher:
            results = await asyncio.gather(batcher.submit(np.full((1, 1), -1.0)),
                                           batcher.submit(np.full((1, 1), 2.0)),
                                           return_exceptions=True)
            return results, await batcher.submit(np.full((1, 1), 5.0))

    (bad, merged), after = asyncio.run(scenario())
    assert isinstance(bad, FloatingPointError) and isinstance(merged, FloatingPointError)
    assert after[0, 0] == 5.0


def test_queue_limit_refuses_the_excess_with_overloaded():
    fn = Recorder(delay_s=0.2)

    async def scenario():
        policy = BatchPolicy(max_batch_size=1, timeout_s=0.0, batch_sizes=(1,), max_queued=2)
        async with DynamicBatcher(fn, policy) as batcher:
            return await asyncio.gather(*(batcher.submit(np.ones((1, 1))) for _ in range(6)),
                                        return_exceptions=True)

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, OverloadedError)]
    assert len(refused) == 4 and all(np.array_equal(r, [[10.0]]) for r in results[:2])


def test_close_finishes_queued_requests_first():
    fn = Recorder(delay_s=0.05)

    async def scenario():
        batcher = DynamicBatcher(fn, BatchPolicy(max_batch_size=2, batch_sizes=(2,)))
        await batcher.__aenter__()
        pending = [asyncio.ensure_future(batcher.submit(np.full((1, 1), float(i))))
                   for i in range(6)]
        await asyncio.sleep(0)
        await batcher.close()
        with pytest.raises(OverloadedError, match="shutting down"):
            await batcher.submit(np.ones((1, 1)))
        return [p.result()[0, 0] for p in pending]

    assert asyncio.run(scenario()) == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]


def test_parse_predict_row_columnar_and_named_forms():
    x = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    for body, row_format in [({"instances": x.tolist()}, True),
                             ({"inputs": x.tolist()}, False),
                             ({"instances": [{"inputs": r} for r in x.tolist()]}, True),
                             ({"inputs": {"inputs": x.tolist()}, "signature_name":
                               "serving_default"}, False)]:
        got, row = parse_predict(json.dumps(body).encode(), np.dtype(np.uint8), (2, 3))
        assert got.dtype == np.uint8 and np.array_equal(got, x) and row == row_format


def test_answer_floats_parse_back_to_the_same_float32_bits():
    outputs = np.random.default_rng(0).random((5, 10), dtype=np.float32) / 3
    answer = json.loads(predict_answer(outputs, row_format=True))["predictions"]
    assert np.array_equal(np.asarray(answer, np.float32).view(np.uint32), outputs.view(np.uint32))
    assert list(json.loads(predict_answer(outputs, row_format=False))) == ["outputs"]


def test_float_inputs_out_of_float32_range_and_deep_nesting_are_refused():
    with pytest.raises(RequestError, match="too large for the model's dtype float32"):
        parse_predict(b'{"inputs": [[1e39]]}', np.dtype(np.float32), (1,))
    with pytest.raises(RequestError, match="nested too deeply"):
        parse_predict(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                      np.dtype(np.float32), (1,))


def test_tf_servings_lenient_forms_and_its_refusals():
    x = [[1, 2, 3]]
    # "" names the default signature; other top-level keys are ignored.
    got, _ = parse_predict(json.dumps({"signature_name": "", "instances": x, "context": 7})
                           .encode(), np.dtype(np.float32), (3,))
    assert np.array_equal(got, np.float32(x))
    # Whole numbers float32 would change are refused, naming the value and where it is.
    with pytest.raises(RequestError, match=r"holds the integer 16777217 at index \(0, 1\), "
                                           r"which the model's dtype float32 cannot represent "
                                           r"exactly \(it would become 16777216.0\)"):
        parse_predict(b'{"instances": [[0, 16777217, 2]]}', np.dtype(np.float32), (3,))
    got, _ = parse_predict(b'{"instances": [[0.1, 16777216, 2]]}', np.dtype(np.float32), (3,))
    assert got[0, 1] == 16777216 and got[0, 0] == np.float32(0.1)  # decimals round as usual
    with pytest.raises(RequestError, match=r"contains NaN or infinity \(first at index "
                                           r"\(0, 2\)\): the model's answer"):
        parse_predict(b'{"instances": [[0, 1, NaN]]}', np.dtype(np.float32), (3,))


@pytest.mark.parametrize("rest, target", [
    ("mnist", ("mnist", None, None, "status")),
    ("mnist/metadata", ("mnist", None, None, "metadata")),
    ("mnist:predict", ("mnist", None, None, "predict")),
    ("mnist/versions/3:predict", ("mnist", "3", None, "predict")),
    ("mnist/labels/stable/metadata", ("mnist", None, "stable", "metadata")),
])
def test_parse_path(rest, target):
    parsed = parse_path(rest)
    assert (parsed.name, parsed.version, parsed.label, parsed.action) == target


def test_parse_path_refuses_other_paths():
    with pytest.raises(RequestError, match="no such path: /v1/models/mnist/extra/x"):
        parse_path("mnist/extra/x")

"""Model versions: base path scans, policies, labels, config files, and hot reload under load."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_serve_http import Server

import fnlearn
from fnlearn import nn
from fnlearn.export import export_model
from fnlearn.serve.config import (
    ModelSpec,
    VersionPolicy,
    parse_labels,
    parse_policy,
    read_model_config_file,
)
from fnlearn.serve.versions import scan_base_path

MODEL = nn.serial(nn.Normalize(0, 255), nn.Flatten(), nn.Dense(32, "relu"),
                  nn.Dense(10, "softmax"))


def test_policies_pick_versions_as_tf_serving_does():
    found = [3, 1, 7, 4]
    assert VersionPolicy().select(found) == {7}
    assert parse_policy("latest:2").select(found) == {4, 7}
    assert parse_policy("all").select(found) == {1, 3, 4, 7}
    assert parse_policy("specific:1,2,3").select(found) == {1, 3}
    assert parse_policy("latest:2").describe() == "latest:2"
    for bad in ("newest", "latest:x", "specific:", "all:2", "latest:0"):
        with pytest.raises(ValueError, match="model_version_policy|num_versions"):
            parse_policy(bad)


def test_labels_and_model_specs_are_checked():
    assert parse_labels("stable=1,canary=2") == {"stable": 1, "canary": 2}
    assert parse_labels(None) == {}
    with pytest.raises(ValueError, match="bad version label 'stable:1': use LABEL=VERSION"):
        parse_labels("stable:1")
    with pytest.raises(ValueError, match="give a base path or a file, not both"):
        ModelSpec("mnist")
    with pytest.raises(ValueError, match="model name must be"):
        ModelSpec("a/b", base_path=Path("."))


def test_model_config_file_in_tf_serving_text_format(tmp_path):
    config = tmp_path / "models.config"
    config.write_text("""
        model_config_list {
          config { name: "mnist" base_path: "/models/mnist" model_platform: "jax"
                   model_version_policy { specific { versions: 1 versions: 2 } }
                   version_labels { key: "stable" value: 1 } }
          config { name: "fashion" base_path: "/models/fashion" model_platform: "jax"
                   model_version_policy { latest { num_versions: 2 } } }
          config { name: "digits" base_path: "/models/digits" }
        }""")
    mnist, fashion, digits = read_model_config_file(config)
    assert (mnist.name, mnist.base_path, mnist.labels) == ("mnist", Path("/models/mnist"),
                                                          {"stable": 1})
    assert mnist.policy == VersionPolicy("specific", versions=(1, 2))
    assert fashion.policy == VersionPolicy("latest", 2)
    assert digits.policy == VersionPolicy("latest", 1) and digits.platform == ""
    config.write_text('model_config_list { config { name: "a" base_path: "/x" } '
                      'config { name: "a" base_path: "/y" } }')
    with pytest.raises(ValueError, match="a model is named twice"):
        read_model_config_file(config)
    config.write_text('model_config_list { config { name: "a" basepath: "/x" } }')
    with pytest.raises(ValueError, match="not a TF Serving model config"):
        read_model_config_file(config)


def test_scan_finds_version_folders_with_one_file(tmp_path):
    for folder, files in {"1": ["model.fnx"], "2": [".model.fnx.tmp"], "3": ["a", "b"],
                          "latest": ["model.fnx"], "12": ["m.fnx", ".hidden"]}.items():
        (tmp_path / folder).mkdir()
        for name in files:
            (tmp_path / folder / name).write_bytes(b"x")
    files, problems = scan_base_path(tmp_path)
    assert files == {1: tmp_path / "1" / "model.fnx", 12: tmp_path / "12" / "m.fnx"}
    assert list(problems) == [3] and "holds 2 files ['a', 'b']" in problems[3]


def _publish(base: Path, version: int, seed: int) -> tuple:
    """Exports MODEL with seed-``seed`` parameters as ``base/version/model.fnx``."""
    params = nn.init(MODEL, seed, (28, 28))
    export_model(MODEL, params, (28, 28), np.uint8, base / str(version) / "model.fnx",
                 platforms=("cpu",))
    return params


def _expected(params, image: np.ndarray) -> np.ndarray:
    # The server pads a one-image request to 32 rows; predict the same shape.
    return fnlearn.predict(MODEL, params, np.repeat(image[None], 32, axis=0))[:1]


def _states(server: Server) -> dict[str, tuple[str, str]]:
    status, answer = server.request("GET", "/v1/models/mnist")
    assert status == 200, answer
    return {row["version"]: (row["state"], row["status"]["error_code"])
            for row in answer["model_version_status"]}


def test_hot_reload_under_load_fails_no_request_and_never_loads_a_half_copied_file(tmp_path):
    base, staging = tmp_path / "mnist", tmp_path / "staging"
    params = {1: _publish(base, 1, seed=1), 2: _publish(staging, 2, seed=2)}
    images = np.random.default_rng(0).integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    expected = {v: [_expected(params[v], image) for image in images] for v in (1, 2)}
    server = Server("--model_base_path", base, "--model_name", "mnist",
                    "--file_system_poll_wait_seconds", "0.1")
    answers: list[list] = [[] for _ in range(3)]
    states_seen: list[dict] = []
    stop = threading.Event()

    def client(k: int) -> None:  # sequential requests, bounded in count and time
        deadline = time.monotonic() + 90
        for i in range(20_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            image = i % len(images)
            status, answer = server.request("POST", "/v1/models/mnist:predict",
                                            json.dumps({"instances": [images[image].tolist()]})
                                            .encode())
            if status != 200:
                answers[k].append(("failed", status, answer))
                continue
            got = np.float32(answer["predictions"])
            version = next((v for v in (1, 2) if np.array_equal(got, expected[v][image])), None)
            answers[k].append((version, time.monotonic()))

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        states_seen.append(_states(server))
        # A slow, non-atomic copy: the watcher scans several times while the file is partial.
        data = (staging / "2" / "model.fnx").read_bytes()
        (base / "2").mkdir()
        copied_at = time.monotonic()
        with open(base / "2" / "model.fnx", "wb") as file:
            for start in range(0, len(data), len(data) // 4 + 1):
                file.write(data[start:start + len(data) // 4 + 1])
                file.flush()
                whole_at = time.monotonic()
                states_seen.append(_states(server))
                time.sleep(0.35)
        deadline = time.monotonic() + 30
        while _states(server).get("1", ("",))[0] != "END" and time.monotonic() < deadline:
            time.sleep(0.1)
        states_seen.append(_states(server))
        time.sleep(1.0)  # keep the load on after the switch
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
        server.stop()

    every = [a for client_answers in answers for a in client_answers]
    failures = [a for a in every if a[0] != 1 and a[0] != 2]
    assert not failures, failures[:5]
    assert len(every) > 100
    for client_answers in answers:  # each client sees version 1, then version 2, never back
        versions_seen = [a[0] for a in client_answers]
        switch = versions_seen.index(2)
        assert set(versions_seen[:switch]) == {1} and set(versions_seen[switch:]) == {2}
        assert client_answers[switch][1] > whole_at  # not before the copy was whole
    assert states_seen[0] == {"1": ("AVAILABLE", "OK")}
    assert all(s.get("2", ("",))[0] != "AVAILABLE" for s in states_seen[1:4])  # while partial
    assert states_seen[-1] == {"2": ("AVAILABLE", "OK"), "1": ("END", "OK")}
    first_2 = min(a[1] for a in every if a[0] == 2)
    on_1 = sum(a[0] == 1 for a in every)
    print(f"\nhot reload under load: {len(every)} requests from 3 clients, {len(failures)} "
          f"failed; {on_1} answered by version 1, then {len(every) - on_1} by version 2; the "
          f"copy took {whole_at - copied_at:.2f} s, the first answer of version 2 came "
          f"{first_2 - whole_at:.2f} s after the file was whole")


def test_config_file_serves_two_models_with_labels_and_a_float_signature(tmp_path):
    params = {1: _publish(tmp_path / "mnist", 1, seed=1), 2: _publish(tmp_path / "mnist", 2,
                                                                      seed=2)}
    export_model(MODEL, params[1], (28, 28), np.uint8,
                 tmp_path / "mnist_float" / "7" / "model.fnx", platforms=("cpu",),
                 float_inputs=True)
    config = tmp_path / "models.config"
    config.write_text(f"""
        model_config_list {{
          config {{ name: "mnist" base_path: "{tmp_path / 'mnist'}" model_platform: "jax"
                   model_version_policy {{ all {{}} }}
                   version_labels {{ key: "stable" value: 1 }}
                   version_labels {{ key: "canary" value: 2 }}
                   version_labels {{ key: "next" value: 3 }} }}
          config {{ name: "mnist_float" base_path: "{tmp_path / 'mnist_float'}" }}
        }}""")
    image = np.random.default_rng(1).integers(0, 256, size=(28, 28), dtype=np.uint8)
    server = Server("--model_config_file", config)
    try:
        assert [row["version"] for row in server.request("GET", "/v1/models/mnist")[1][
            "model_version_status"]] == ["2", "1"]
        for path, version in (("/v1/models/mnist:predict", 2),
                              ("/v1/models/mnist/labels/stable:predict", 1),
                              ("/v1/models/mnist/labels/canary:predict", 2),
                              ("/v1/models/mnist/versions/1:predict", 1)):
            assert np.array_equal(server.predict(image[None], path=path),
                                  _expected(params[version], image)), path
        # pixels / 255.0, as TensorFlow's tutorial clients send: the same bits as uint8 pixels
        assert np.array_equal(server.predict(image[None] / 255.0,
                                             path="/v1/models/mnist_float:predict"),
                              _expected(params[1], image))
        status, answer = server.request("GET", "/v1/models/mnist/labels/stable/metadata")
        assert status == 200 and answer["model_spec"]["version"] == "1"
        status, answer = server.request("POST", "/v1/models/mnist/labels/next:predict",
                                        json.dumps({"instances": [image.tolist()]}).encode())
        assert status == 404 and answer["error"] == (
            "label 'next' of model 'mnist' points to version 3, which is not available; it "
            "serves versions 1, 2")
        big = np.zeros((1, 28, 28), np.int64)
        big[0, 2, 3] = 16_777_217
        status, answer = server.request("POST", "/v1/models/mnist_float:predict",
                                        json.dumps({"instances": big.tolist()}).encode())
        assert status == 400 and answer["error"] == (
            '"instances" holds the integer 16777217 at index (0, 2, 3), which the model\'s '
            'dtype float32 cannot represent exactly (it would become 16777216.0)')
        status, answer = server.request("POST", "/v1/models/mnist_float:predict",
                                        json.dumps({"inputs": [[[1.5] * 28] * 28]}).encode())
        assert status == 400 and answer["error"] == (
            '"inputs" holds 1.5 at index (0, 0, 0), outside the model\'s input range [0.0, 1.0]')
        status, answer = server.request("GET", "/v1/models")
        assert answer["error"] == "name a model: /v1/models/mnist, /v1/models/mnist_float"
    finally:
        server.stop()


def test_a_missing_base_path_is_a_clear_start_up_error(tmp_path, capsys):
    from fnlearn.serve import main

    assert main(["--model_base_path", str(tmp_path / "nothing"), "--port", "0",
                 "--rest_api_port", "1"]) == 1
    assert f"model 'nothing': no folder at base path {tmp_path / 'nothing'}" in (
        capsys.readouterr().err)

"""The benchmark harness: its arithmetic on made-up numbers, and a quick run end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import benchmark  # noqa: E402


def test_summary_and_pair_ratios_on_made_up_numbers():
    assert benchmark.summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert benchmark.summarize([4.0, 1.0, 2.0, 3.0]) == {"median": 2.5, "min": 1.0, "max": 4.0}
    assert benchmark.summarize([]) is None
    # Pair by pair: 10/1, 12/2, 40/4 -> 10, 6, 10; the median is 10, not 62/7 (ratio of medians 6).
    assert benchmark.pair_ratio([10.0, 12.0, 40.0], [1.0, 2.0, 4.0]) == 10.0
    # A repetition where either side failed drops out of the pairing.
    assert benchmark.pair_ratio([10.0, None, 9.0], [2.0, 1.0, None]) == 5.0
    assert benchmark.pair_ratio([1.0], [None]) is None


def test_aggregate_marks_missing_and_failed_contenders():
    runs = {
        "fnlearn": [{"status": "ok", "fit_s": 1.0}, {"status": "ok", "fit_s": 2.0}],
        "PyTorch": [{"status": "ok", "fit_s": 6.0}, {"status": "ok", "fit_s": 16.0}],
        "Keras (TensorFlow)": [{"status": "missing", "missing": "tensorflow"}] * 2,
        "JAX + Optax loop": [{"status": "failed", "returncode": 1}] * 2,
    }
    summary = benchmark.aggregate(runs, ["fit_s"], ["fit_s"])
    assert summary["PyTorch"]["fit_s"] == {"median": 11.0, "min": 6.0, "max": 16.0}
    assert summary["PyTorch"]["ratio"]["fit_s"] == 7.0  # median of 6/1 and 16/2
    assert summary["fnlearn"]["ratio"]["fit_s"] == 1.0
    assert summary["Keras (TensorFlow)"]["status"] == "missing"
    assert summary["Keras (TensorFlow)"]["detail"] == "tensorflow"
    assert summary["Keras (TensorFlow)"]["ratio"]["fit_s"] is None
    assert summary["JAX + Optax loop"]["status"] == "failed"
    assert summary["JAX + Optax loop"]["fit_s"] is None


def test_quick_run_writes_table_chart_and_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FNLEARN_DATA_DIR"}
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "benchmark.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "benchmark.json").read_text())
    markdown = (out / "benchmark.md").read_text()
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["settings"]["data"] == "fnlearn's shipped sample"
    assert markdown in done.stdout

    summary = report["mnist"]["summary"]
    assert list(summary) == list(benchmark.MNIST_CONTENDERS)
    for name, entry in summary.items():
        assert f"| {name} |" in markdown
        assert entry["status"] in ("ok", "missing"), (name, entry)
        if entry["status"] == "ok":
            for key in ("first_epoch_s", "fit_s", "process_s", "peak_mib", "test_accuracy"):
                assert isinstance(entry[key]["median"], float), (name, key)
            assert entry["process_s"]["median"] > entry["fit_s"]["median"] > 0
            assert 0 < entry["test_accuracy"]["median"] <= 100
        else:
            assert f"| {name} | **missing**" in markdown
    assert summary["fnlearn"]["status"] == "ok"
    regression = report["regression"]
    assert list(regression["summary"]) == list(benchmark.REGRESSION_CONTENDERS)
    if all(entry["status"] == "ok" for entry in regression["summary"].values()):
        assert regression["lines"].startswith("identical"), regression["printed"]


def test_missing_framework_is_a_missing_row(tmp_path, monkeypatch):
    # A `torch` that cannot be imported, first on the contenders' path.
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('torch hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    monkeypatch.delenv("FNLEARN_DATA_DIR", raising=False)
    report = benchmark.main(
        ["--quick", "--only", "PyTorch", "--no-regression", "--out", str(tmp_path / "out")]
    )
    entry = report["mnist"]["summary"]["PyTorch"]
    assert entry["status"] == "missing"
    assert entry["detail"] == "torch"
    assert "| PyTorch | **missing** (torch)" in (tmp_path / "out" / "benchmark.md").read_text()


def test_full_mode_needs_data(monkeypatch):
    monkeypatch.delenv("FNLEARN_DATA_DIR", raising=False)
    with pytest.raises(SystemExit):
        benchmark.main(["--reps", "2"])


def test_relative_data_dir_is_made_absolute_for_the_contenders(tmp_path, monkeypatch):
    # Contenders run in a scratch folder, so a relative --data-dir must be resolved first.
    import benchmark_convnet

    monkeypatch.chdir(tmp_path)
    want = str(tmp_path / "mnist")
    assert benchmark.parse_args(["--data-dir", "mnist"]).data_dir == want
    assert benchmark_convnet.parse_args(["--data-dir", "mnist"]).data_dir == want
    assert benchmark_convnet.parse_args(["--data-dir", want]).data_dir == want


def test_convnet_table_gives_medians_spreads_and_paired_ratios_to_pytorch():
    import benchmark_convnet

    def ok(steady, first):
        return {"status": "ok", "steady_img_s": steady, "first_img_s": first}

    runs = {"keras": {"fnlearn": [ok(300.0, 100.0), ok(600.0, 200.0), ok(900.0, 300.0)],
                      "PyTorch": [ok(100.0, 90.0), ok(300.0, 90.0), ok(300.0, 90.0)]},
            "torch": {"fnlearn": [{"status": "missing"}], "PyTorch": [ok(50.0, 40.0)]}}
    text = benchmark_convnet.table(runs)
    # Pair by pair: 3, 2, 3 -> median 3.00 (not the ratio of medians, 2.00).
    assert "| keras | fnlearn | 600 (300-900) | 200 (100-300) | 3.00 |" in text
    assert "| keras | PyTorch | 300 (100-300) | 90 (90-90) | 1.00 |" in text
    assert "| torch | fnlearn | missing |  |  |" in text


# The float32 runs of fnlearn and PyTorch are the same code with the policy off.
@pytest.mark.parametrize("script, policy", [
    ("fnlearn_convnet.py", "mixed_bfloat16"), ("torch_convnet.py", "mixed_bfloat16"),
    ("jax_convnet.py", "float32")])
def test_convnet_contenders_report_their_throughput(script, policy, tmp_path, need):
    if script == "torch_convnet.py":
        need("torch")
    command = [sys.executable, str(EXPERIMENTS / "contenders" / script), "--recipe", "torch",
               "--source", "sample", "--steps", "2", "--epochs", "2", "--policy", policy]
    env = {**os.environ, "PYTHONPATH": str(EXPERIMENTS.parent)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT "))
    result = json.loads(line[len("BENCH_RESULT "):])
    assert result["policy"] == policy
    assert result["train_images"] == 2 * 64
    assert len(result["epoch_seconds"]) == 2 and result["steady_img_s"] > 0
    assert 0.0 <= result["val_accuracy"] <= 1.0


def test_mixed_policy_runs_every_framework_in_bfloat16_beside_fnlearn_float32(tmp_path):
    import benchmark_convnet

    mixed = benchmark_convnet.contenders("mixed_bfloat16")
    assert mixed["fnlearn, float32"] == ("fnlearn_convnet.py", "float32")
    assert {policy for name, (_, policy) in mixed.items() if name != "fnlearn, float32"} == {
        "mixed_bfloat16"}
    assert all(p == "float32" for _, p in benchmark_convnet.contenders("float32").values())
    # The plain JAX loop has no mixed precision: it refuses rather than time float32.
    command = [sys.executable, str(EXPERIMENTS / "contenders" / "jax_convnet.py"), "--recipe",
               "torch", "--source", "sample", "--policy", "mixed_bfloat16"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(EXPERIMENTS.parent)})
    assert done.returncode != 0 and "float32 only" in done.stderr


def test_sequence_benchmark_quick_run_on_the_sample(tmp_path):
    import benchmark_sequences

    runs = benchmark_sequences.main(["--recipes", "rnn", "--only", "fnlearn", "--reps", "1",
                                     "--epochs", "2", "--steps", "3", "--out", str(tmp_path)])
    assert runs["rnn"]["fnlearn"][0]["status"] == "ok"
    text = (tmp_path / "benchmark_sequences.md").read_text()
    assert "| rnn | fnlearn |" in text and "cores" in text
    assert json.loads((tmp_path / "benchmark_sequences.json").read_text())["rnn"]["fnlearn"]


def test_generative_table_gives_seconds_per_full_epoch_and_paired_ratios():
    import benchmark_generative

    def ok(steady, first):
        return {"status": "ok", "steady_img_s": steady, "first_epoch_s": first}

    runs = {"fnlearn": [ok(200.0, 30.0), ok(300.0, 40.0), ok(400.0, 50.0)],
            "TensorFlow": [ok(100.0, 20.0), ok(300.0, 20.0), ok(100.0, 20.0)]}
    text = benchmark_generative.table(runs)
    # 60,000 / 300 img/s = 200 s; pair by pair 2, 1, 4 -> median 2.00.
    assert "| fnlearn | 300 (200-400) | 200 | 40.0 (30.0-50.0) | 2.00 |" in text
    assert "| TensorFlow | 100 (100-300) | 600 | 20.0 (20.0-20.0) | 1.00 |" in text
    missing = benchmark_generative.table({"fnlearn": [{"status": "missing"}],
                                          "TensorFlow": [ok(100.0, 20.0)]})
    assert "| fnlearn | missing |" in missing


def test_generative_run_rates_the_epochs_after_the_first(tmp_path, monkeypatch):
    import benchmark_generative

    seen = {}

    def fake_process(command, env, cwd, timeout_s):
        seen["command"] = command
        return {"missing": None, "returncode": 0, "stderr_tail": "",
                "result": {"epoch_seconds": [30.0, 4.0, 6.0], "framework_version": "x"}}

    monkeypatch.setattr(benchmark_generative, "run_process", fake_process)
    args = benchmark_generative.parse_args(["--train-size", "1024", "--data-dir",
                                            str(tmp_path)])
    run = benchmark_generative.dcgan_run("fnlearn", args, str(tmp_path), str(tmp_path))
    # Two later epochs of 1,024 images in 10 s; the first (compiling) is left out.
    assert run["steady_img_s"] == pytest.approx(204.8) and run["first_epoch_s"] == 30.0
    assert seen["command"][1].endswith("fnlearn_dcgan.py")
    assert seen["command"][seen["command"].index("--train-size") + 1] == "1024"
    with pytest.raises(SystemExit):
        benchmark_generative.parse_args(["--epochs", "1"])


def test_compile_bench_runs_both_levels_and_they_train_to_the_same_bits(capsys):
    import compile_bench
    runs = compile_bench.main(["--reps", "1", "--recipes", "mlp", "--train-size", "256",
                               "--data-dir", ""])
    default, o1 = runs["mlp -O3 (XLA default)"][0], runs["mlp -O1 (fnlearn)"][0]
    assert default["train"] > 0.05 and o1["train"] > 0.05  # it did compile, cache off
    assert default["loss"] == o1["loss"]  # every digit of repr(float32): the same bits
    assert "| mlp | -O1 (fnlearn) |" in capsys.readouterr().out

"""Benchmark: the article's MNIST recipe in fnlearn, Keras, PyTorch and a plain JAX loop.

Each contender runs in its own fresh Python process, repetitions alternate between contenders
(rep 1: A B C D, rep 2: A B C D, ...) so that machine noise spreads evenly, and the report gives
medians with their min-max spread. Ratios against fnlearn are taken pair by pair (rep i of X
over rep i of fnlearn) before the median. The regression program (1000 full-batch epochs) is
timed against a PyTorch re-implementation of the reference program.

    python experiments/benchmark.py --data-dir DATA [--reps 3] [--out out/benchmark] [--quick]
    python experiments/benchmark.py --convnet --data-dir DATA [--reps 3] [--steps 200]
    python experiments/benchmark.py --sequences --data-dir DATA [--reps 3] [--steps 100]
    python experiments/benchmark.py --generative --data-dir DATA [--reps 3] [--epochs 3]

``--convnet`` runs the convnet recipes instead (``benchmark_convnet.py``), ``--sequences``
the LSTM and ViT recipes (``benchmark_sequences.py``), ``--generative`` the DCGAN against
TensorFlow's tutorial (``benchmark_generative.py``).
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONTENDERS_DIR = HERE / "contenders"
REGRESSION_SCRIPT = HERE / "regression.py"
RESULT_PREFIX = "BENCH_RESULT "
MISSING_PREFIX = "BENCH_MISSING "
MISSING_EXIT = 3
EPOCH_LINE = re.compile(r"^Epoch \[\d+/\d+\], Loss: .*$")
BASELINE = "fnlearn"

# name -> (script, fnlearn compilation cache: "cold", "warm" or None); the order of every rep.
MNIST_CONTENDERS = {
    "fnlearn": ("fnlearn_mnist.py", "cold"),
    "fnlearn (warm cache)": ("fnlearn_mnist.py", "warm"),
    "Keras (TensorFlow)": ("keras_mnist.py", None),
    "PyTorch": ("torch_mnist.py", None),
    "JAX + Optax loop": ("jax_loop_mnist.py", None),
}
REGRESSION_CONTENDERS = ("fnlearn", "fnlearn (warm cache)", "PyTorch")

# (metric key, column title, number format)
METRICS = (
    ("first_epoch_s", "1st epoch s", "{:.2f}"),
    ("to_first_epoch_s", "spawn to 1st epoch s", "{:.2f}"),
    ("fit_s", "fit s", "{:.2f}"),
    ("process_s", "process s", "{:.2f}"),
    ("peak_mib", "peak MiB", "{:.0f}"),
    ("test_accuracy", "test acc %", "{:.2f}"),
)
RATIO_METRICS = (("fit_s", "fit ×"), ("process_s", "process ×"), ("peak_mib", "memory ×"))
REGRESSION_METRICS = (("process_s", "process s", "{:.2f}"), ("peak_mib", "peak MiB", "{:.0f}"))


def summarize(values: Sequence[float]) -> dict[str, float] | None:
    """Median and min-max spread of a metric over repetitions.

    Args:
      values: one number per repetition.

    Returns:
      `{"median", "min", "max"}`, or `None` when there are no values.
    """
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def pair_ratio(values: Sequence[float | None], baseline: Sequence[float | None]) -> float | None:
    """Median of the per-repetition ratios `values[i] / baseline[i]`.

    Pairing rep i with rep i keeps slow phases of a noisy machine from favouring either side.

    Args:
      values: one number (or `None` for a failed run) per repetition of the contender.
      baseline: the same for the baseline, in the same repetition order.

    Returns:
      The median ratio over repetitions where both ran, or `None` if none did.
    """
    ratios = [v / b for v, b in zip(values, baseline, strict=False) if v is not None and b]
    return statistics.median(ratios) if ratios else None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the platform's best guess elsewhere.

    Returns:
      A one-line description.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_process(
    command: list[str], env: dict[str, str], cwd: str, timeout_s: float = 900
) -> dict[str, object]:
    """Run one child process and measure it from spawning to its result line and to its exit.

    Args:
      command: the command line; `sys.executable` first.
      env: the child's environment.
      cwd: the child's working directory (catches any files it writes).
      timeout_s: the child is killed after this long.

    Returns:
      `result` (the parsed `BENCH_RESULT`, or `None`), `result_s` (spawn to that line),
      `exit_s` (spawn to exit), `peak_mib` (the child's maximum resident set), `returncode`,
      `missing` (the framework a `BENCH_MISSING` line named), `lines` (stdout) and `stderr_tail`.
    """
    with tempfile.TemporaryFile("w+") as stderr:
        spawn_unix, start = time.time(), time.perf_counter()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=cwd
        )
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        lines, result, result_s, missing = [], None, None, None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(RESULT_PREFIX) and result is None:
                result_s = time.perf_counter() - start
                result = json.loads(line[len(RESULT_PREFIX) :])
            elif line.startswith(MISSING_PREFIX):
                missing = line[len(MISSING_PREFIX) :].strip()
            else:
                lines.append(line)
        # wait4 rather than Popen.wait: it also returns the child's own rusage (ru_maxrss, KiB).
        _, status, usage = os.wait4(proc.pid, 0)
        exit_s = time.perf_counter() - start
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        stderr.seek(0)
        stderr_tail = stderr.read()[-2000:]
    return {
        "result": result,
        "result_s": result_s,
        "exit_s": exit_s,
        "spawn_unix": spawn_unix,
        "peak_mib": usage.ru_maxrss / 1024,
        "returncode": proc.returncode,
        "missing": missing,
        "lines": lines,
        "stderr_tail": stderr_tail,
    }


def child_env(cache_dir: str | None = None) -> dict[str, str]:
    """The environment for a contender: fnlearn importable from the repository, cache chosen.

    Args:
      cache_dir: the folder for fnlearn's compilation cache (`FNLEARN_CACHE_DIR`; fnlearn turns
        JAX's persistent cache on there, with its own thresholds), `None` to leave it alone.

    Returns:
      A copy of this process's environment with those changes.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # A cache folder chosen for JAX directly would override fnlearn's and leak between runs.
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache_dir:
        env["FNLEARN_CACHE_DIR"] = cache_dir
        env.pop("FNLEARN_COMPILATION_CACHE", None)
    return env


def mnist_run(
    name: str, args: argparse.Namespace, workdir: str, cache_root: str, rep: int
) -> dict[str, object]:
    """Run one repetition of one MNIST contender and collect its metrics.

    Args:
      name: a key of `MNIST_CONTENDERS`.
      args: the benchmark's arguments (data, epochs, batch size, limit).
      workdir: the child's working directory.
      cache_root: parent folder of the JAX compilation caches.
      rep: repetition number, which names a fresh cache folder for cold runs.

    Returns:
      The run's metrics plus `status` ("ok", "missing" or "failed").
    """
    script, cache = MNIST_CONTENDERS[name]
    if cache == "warm":
        env = child_env(os.path.join(cache_root, "warm"))
    elif cache == "cold":
        # fnlearn caches compiled programs by default; a fresh empty folder each time makes
        # every cold run a user's first run (it still pays for writing the cache).
        env = child_env(os.path.join(cache_root, f"cold-{rep}"))
    else:
        env = child_env()
    command = [sys.executable, str(CONTENDERS_DIR / script)]
    command += ["--data-dir", args.data_dir] if args.data_dir else ["--source", "sample"]
    command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    command += ["--seed", str(rep)]
    if args.limit:
        command += ["--limit", str(args.limit)]
    run = run_process(command, env, workdir)
    result = run["result"]
    if run["missing"] or run["returncode"] == MISSING_EXIT:
        return {"status": "missing", "missing": run["missing"] or "not importable"}
    if run["returncode"] != 0 or result is None:
        return {"status": "failed", "returncode": run["returncode"], "stderr": run["stderr_tail"]}
    return {
        "status": "ok",
        "first_epoch_s": result["first_epoch_s"],
        "to_first_epoch_s": result["first_epoch_end_unix"] - run["spawn_unix"],
        "fit_s": result["fit_s"],
        "process_s": run["result_s"],
        "peak_mib": run["peak_mib"],
        "test_accuracy": 100 * result["test_accuracy"],
        "epoch_seconds": result.get("epoch_seconds"),
        "framework_version": result.get("framework_version"),
        "epochs_in_one_call": result.get("epochs_in_one_call", False),
    }


def regression_run(name: str, workdir: str, cache_root: str, rep: int) -> dict[str, object]:
    """Run one repetition of a regression program (fnlearn's experiment or the PyTorch one).

    Args:
      name: one of `REGRESSION_CONTENDERS`.
      workdir: the child's working directory (where the plot lands).
      cache_root: parent folder of the compilation caches.
      rep: repetition number, which names a fresh cache folder for cold runs.

    Returns:
      `status`, `process_s` (spawn to exit), `peak_mib` and the `Epoch [...]` lines it printed.
    """
    if name.startswith("fnlearn"):
        if not REGRESSION_SCRIPT.exists():
            return {"status": "missing", "missing": f"{REGRESSION_SCRIPT.name} not written yet"}
        script = REGRESSION_SCRIPT
        warm = name.endswith("(warm cache)")
        env = child_env(os.path.join(cache_root, "regression-" + ("warm" if warm else f"{rep}")))
    else:
        script, env = CONTENDERS_DIR / "torch_regression.py", child_env()
    run = run_process([sys.executable, str(script)], env, workdir)
    if run["missing"] or run["returncode"] == MISSING_EXIT:
        return {"status": "missing", "missing": run["missing"] or "not importable"}
    if run["returncode"] != 0:
        return {"status": "failed", "returncode": run["returncode"], "stderr": run["stderr_tail"]}
    return {
        "status": "ok",
        "process_s": run["exit_s"],
        "peak_mib": run["peak_mib"],
        "epoch_lines": [line for line in run["lines"] if EPOCH_LINE.match(line)],
    }


def aggregate(
    runs: dict[str, list[dict[str, object]]], metrics: Sequence[str], ratios: Sequence[str]
) -> dict[str, dict[str, object]]:
    """Summaries per contender: medians and spreads of each metric, pair ratios to fnlearn.

    Args:
      runs: contender name -> its runs, in repetition order.
      metrics: the metric keys to summarize.
      ratios: the metric keys to also express as a ratio to fnlearn's.

    Returns:
      Contender name -> `{"status", metric: summary, "ratio": {metric: ratio}}`.
    """

    def series(name: str, key: str) -> list[float | None]:
        return [r.get(key) if r["status"] == "ok" else None for r in runs.get(name, [])]

    summary = {}
    for name, contender_runs in runs.items():
        ok = [r for r in contender_runs if r["status"] == "ok"]
        statuses = {r["status"] for r in contender_runs}
        entry = {"status": "ok" if ok else ("missing" if "missing" in statuses else "failed")}
        if not ok:
            entry["detail"] = next(
                (r.get("missing") or f"exit {r.get('returncode')}" for r in contender_runs), ""
            )
        entry["failed_reps"] = len(contender_runs) - len(ok)
        for key in metrics:
            entry[key] = summarize([r[key] for r in ok if r.get(key) is not None])
        entry["ratio"] = {
            key: pair_ratio(series(name, key), series(BASELINE, key)) for key in ratios
        }
        summary[name] = entry
    return summary


def cell(stats: dict[str, float] | None, fmt: str) -> str:
    """Format a summary as `median (min–max)`.

    Args:
      stats: a `summarize` result or `None`.
      fmt: the number format.

    Returns:
      The table cell text.
    """
    if stats is None:
        return "–"
    spread = f"{fmt.format(stats['min'])}–{fmt.format(stats['max'])}"
    return f"{fmt.format(stats['median'])} ({spread})"


def status_row(entry: dict[str, object], columns: int) -> list[str]:
    """Cells for a contender that did not run: its status, then dashes.

    Args:
      entry: the contender's summary.
      columns: number of cells after the name.

    Returns:
      The cells.
    """
    return [f"**{entry['status']}** ({entry.get('detail', '')})"] + ["–"] * (columns - 1)


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma")


def cpu_flags() -> str:
    """The vector extensions this CPU has, of those that matter to XLA and oneDNN."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(flag for flag in CPU_FLAGS if flag in have) or "none of them"
    except OSError:
        pass
    return "unknown"


def write_report(out: str, stem: str, markdown: str, runs: dict) -> None:
    """Writes ``STEM.md`` (the table) and ``STEM.json`` (every run) to the folder ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.md").write_text(markdown + "\n")
    (folder / f"{stem}.json").write_text(json.dumps(runs, indent=2))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table.

    Args:
      header: column titles.
      rows: cells per row.

    Returns:
      The table text.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def targets(mnist: dict[str, dict], regression: dict[str, dict]) -> list[tuple[str, str, str]]:
    """Check the issue's performance targets against the measured medians.

    Args:
      mnist: `aggregate` output for the MNIST contenders.
      regression: `aggregate` output for the regression programs.

    Returns:
      `(target, measured, "yes" / "no" / "n/a")` triples.
    """

    def median(summary: dict[str, dict], name: str, key: str) -> float | None:
        stats = summary.get(name, {}).get(key)
        return stats["median"] if stats else None

    def ratio(name: str, key: str) -> float | None:
        return mnist.get(name, {}).get("ratio", {}).get(key)

    checks = [
        ("fnlearn fit (5 epochs) <= 1.5 s", median(mnist, BASELINE, "fit_s"), "<=", 1.5, "s"),
        ("fnlearn process, cold <= 4.5 s", median(mnist, BASELINE, "process_s"), "<=", 4.5, "s"),
        (
            "fnlearn process, warm cache <= 3.5 s",
            median(mnist, "fnlearn (warm cache)", "process_s"),
            "<=",
            3.5,
            "s",
        ),
        ("fit >= 10x faster than Keras", ratio("Keras (TensorFlow)", "fit_s"), ">=", 10, "x"),
        ("fit >= 6x faster than PyTorch", ratio("PyTorch", "fit_s"), ">=", 6, "x"),
        (
            "fit >= 2.5x faster than the JAX loop",
            ratio("JAX + Optax loop", "fit_s"),
            ">=",
            2.5,
            "x",
        ),
        ("process >= 5x faster than Keras", ratio("Keras (TensorFlow)", "process_s"), ">=", 5, "x"),
        ("peak memory <= PyTorch's", ratio("PyTorch", "peak_mib"), ">=", 1.0, "x"),
    ]
    checks.append(
        (
            "regression process no slower than PyTorch",
            regression.get("PyTorch", {}).get("ratio", {}).get("process_s"),
            ">=",
            1.0,
            "x",
        )
    )
    rows = []
    for label, value, op, bound, unit in checks:
        if value is None:
            rows.append((label, "–", "n/a"))
            continue
        met = value <= bound if op == "<=" else value >= bound
        rows.append((label, f"{value:.2f} {unit}", "yes" if met else "no"))
    return rows


def render_markdown(report: dict[str, object]) -> str:
    """The whole benchmark report as Markdown: settings, MNIST table, regression, targets.

    Args:
      report: the dict `main` writes as JSON.

    Returns:
      The Markdown text.
    """
    settings, machine = report["settings"], report["machine"]
    mnist, regression = report["mnist"]["summary"], report["regression"]["summary"]
    out = [
        "# fnlearn benchmark",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}.  ",
        f"MNIST: {settings['epochs']} epochs, batch {settings['batch_size']}, "
        f"validation on the test set every epoch, train examples: {settings['limit'] or 'all'}, "
        f"data: {settings['data']}, {settings['reps']} repetition(s), alternating.",
        "",
        "Cells: median (min–max) over repetitions. Ratios: contender / fnlearn per repetition, "
        "then the median (above 1: fnlearn is faster or smaller). 1st epoch includes compilation; "
        "fit includes per-epoch validation; process runs from spawning Python to the test "
        "accuracy being printed; peak MiB is the child's maximum resident set.",
        "",
    ]
    header = ["contender"] + [title for _, title, _ in METRICS] + [t for _, t in RATIO_METRICS]
    rows = []
    for name, entry in mnist.items():
        if entry["status"] != "ok":
            rows.append([name] + status_row(entry, len(header) - 1))
            continue
        cells = [cell(entry[key], fmt) for key, _, fmt in METRICS]
        ratios = [entry["ratio"][key] for key, _ in RATIO_METRICS]
        cells += ["–" if r is None else f"{r:.2f}" for r in ratios]
        if entry["failed_reps"]:
            cells[0] += f" ({entry['failed_reps']} failed)"
        rows.append([name] + cells)
    out += [markdown_table(header, rows), ""]
    if any(r.get("epochs_in_one_call") for r in report["mnist"]["runs"].get(BASELINE, [])):
        out += [
            "fnlearn ran all epochs in one compiled call, so its first trained epoch is only "
            "available when `fit` returns: its 1st-epoch time is the whole `fit` time.",
            "",
        ]

    out += ["## Regression (1000 full-batch epochs, process from spawn to exit)", ""]
    header = ["program"] + [title for _, title, _ in REGRESSION_METRICS] + ["process ×"]
    rows = []
    for name, entry in regression.items():
        if entry["status"] != "ok":
            rows.append([name] + status_row(entry, len(header) - 1))
            continue
        ratio = entry["ratio"]["process_s"]
        rows.append(
            [name]
            + [cell(entry[key], fmt) for key, _, fmt in REGRESSION_METRICS]
            + ["–" if ratio is None else f"{ratio:.2f}"]
        )
    out += [markdown_table(header, rows), "", f"Printed lines: {report['regression']['lines']}", ""]

    out += ["## Targets", ""]
    full = (settings["epochs"], settings["batch_size"], settings["limit"]) == (5, 32, None)
    if full:
        out += [markdown_table(["target", "measured", "met"], targets(mnist, regression)), ""]
    else:
        out += ["Checked only on a full run (5 epochs, batch 32, all the data).", ""]
    return "\n".join(out)


def plot(report: dict[str, object], path: Path) -> None:
    """Bar chart of fit and process time per MNIST contender, and the regression process time.

    Args:
      report: the dict `main` writes as JSON.
      path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_reg) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    for summary, axes, keys in (
        (report["mnist"]["summary"], ax, ("fit_s", "process_s")),
        (report["regression"]["summary"], ax_reg, ("process_s",)),
    ):
        names = list(summary)
        width = 0.8 / len(keys)
        for k, key in enumerate(keys):
            stats = [summary[n].get(key) for n in names]
            heights = [s["median"] if s else 0 for s in stats]
            errors = [
                [s["median"] - s["min"] if s else 0 for s in stats],
                [s["max"] - s["median"] if s else 0 for s in stats],
            ]
            positions = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(names))]
            axes.bar(positions, heights, width, yerr=errors, capsize=3, label=key.replace("_s", ""))
        axes.set_xticks(range(len(names)))
        axes.set_xticklabels(
            [
                n if summary[n]["status"] == "ok" else f"{n}\n({summary[n]['status']})"
                for n in names
            ],
            rotation=20,
            ha="right",
            fontsize=8,
        )
        axes.set_ylabel("seconds (median, bars: min–max)")
        axes.legend()
    ax.set_title("MNIST recipe")
    ax_reg.set_title("Regression")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The benchmark's command line.

    Args:
      argv: arguments, `None` for `sys.argv[1:]`.

    Returns:
      The parsed arguments, with quick-mode defaults filled in.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Data: --data-dir, else $FNLEARN_DATA_DIR; --quick without either uses "
        "fnlearn's shipped MNIST sample.",
    )
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--reps", type=int, default=3, help="repetitions per contender")
    parser.add_argument("--out", default="out/benchmark", help="folder for md, png and json")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: 1 rep, 1 epoch, 2000/1000 examples"
    )
    parser.add_argument("--epochs", type=int, default=None, help="default 5 (quick: 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="train subset (test: half)")
    parser.add_argument(
        "--only", default=None, help="comma-separated contender names to run (default all)"
    )
    parser.add_argument("--no-regression", action="store_true", help="skip the regression part")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps = 1
        args.limit = args.limit or 2000
    args.epochs = args.epochs or (1 if args.quick else 5)
    if not args.data_dir and not args.quick:
        parser.error("give --data-dir (or set FNLEARN_DATA_DIR) with the MNIST IDX gz files")
    # Contenders run in a scratch folder: a relative data folder must not move with them.
    args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark, write benchmark.md, benchmark.png and benchmark.json, print the table.

    Args:
      argv: arguments, `None` for `sys.argv[1:]`.

    Returns:
      The report that was written as JSON.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--convnet" in argv:
        # The convnet section: its own contenders and options (benchmark_convnet.py).
        from benchmark_convnet import main as convnet_main

        return convnet_main([a for a in argv if a != "--convnet"])
    if "--sequences" in argv:
        from benchmark_sequences import main as sequences_main

        return sequences_main([a for a in argv if a != "--sequences"])
    if "--generative" in argv:
        from benchmark_generative import main as generative_main

        return generative_main([a for a in argv if a != "--generative"])
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(MNIST_CONTENDERS)
    if args.only:
        wanted = {n.strip().lower() for n in args.only.split(",")}
        names = [n for n in names if n.lower() in wanted]
        if not names:
            raise SystemExit(f"--only matched none of: {', '.join(MNIST_CONTENDERS)}")

    with tempfile.TemporaryDirectory(prefix="fnlearn-bench-") as scratch:
        workdir = os.path.join(scratch, "work")
        os.mkdir(workdir)
        if "fnlearn (warm cache)" in names:
            # One untimed run fills the cache the warm contender then reads.
            print("warming fnlearn's compilation cache ...", flush=True)
            mnist_run("fnlearn (warm cache)", args, workdir, scratch, rep=0)
        if not args.no_regression:
            regression_run("fnlearn (warm cache)", workdir, scratch, rep=0)

        mnist_runs = {name: [] for name in names}
        regression_runs = {} if args.no_regression else {n: [] for n in REGRESSION_CONTENDERS}
        for rep in range(1, args.reps + 1):
            for name in names:
                run = mnist_run(name, args, workdir, scratch, rep)
                mnist_runs[name].append(run)
                shown = f"{run['fit_s']:.2f} s fit" if run["status"] == "ok" else run["status"]
                print(f"rep {rep}/{args.reps}  {name:<22} {shown}", flush=True)
            for name in regression_runs:
                run = regression_run(name, workdir, scratch, rep)
                regression_runs[name].append(run)
                shown = f"{run['process_s']:.2f} s" if run["status"] == "ok" else run["status"]
                print(f"rep {rep}/{args.reps}  regression {name:<11} {shown}", flush=True)

    printed = {
        name: next((r["epoch_lines"] for r in runs if r["status"] == "ok"), None)
        for name, runs in regression_runs.items()
    }
    if not printed:
        lines_verdict = "not run"
    elif None in printed.values():
        lines_verdict = "not compared (a program did not run)"
    elif len(printed["PyTorch"]) == 10 and all(p == printed["PyTorch"] for p in printed.values()):
        lines_verdict = "identical: both print the same ten `Epoch [k/1000], Loss: ...` lines"
    else:
        lines_verdict = "DIFFERENT (see benchmark.json)"
    report = {
        "settings": {
            "reps": args.reps,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "limit": args.limit,
            "quick": args.quick,
            "data": args.data_dir or "fnlearn's shipped sample",
        },
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "mnist": {
            "runs": mnist_runs,
            "summary": aggregate(
                mnist_runs, [k for k, _, _ in METRICS], [k for k, _ in RATIO_METRICS]
            ),
        },
        "regression": {
            "runs": regression_runs,
            "printed": printed,
            "lines": lines_verdict,
            "summary": aggregate(
                regression_runs, [k for k, _, _ in REGRESSION_METRICS], ["process_s"]
            ),
        },
    }
    markdown = render_markdown(report)
    (out / "benchmark.md").write_text(markdown)
    (out / "benchmark.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "benchmark.png")
    print(markdown)
    return report


if __name__ == "__main__":
    main()

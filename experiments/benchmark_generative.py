"""Benchmark: TensorFlow's DCGAN tutorial in fnlearn and in TensorFlow, seconds per epoch.

The generative section of ``benchmark.py`` (``python experiments/benchmark.py
--generative`` runs it), in ``benchmark_sequences.py``'s style: each contender runs in
its own process (``experiments/contenders/fnlearn_dcgan.py``, ``tf_dcgan.py``: the
tutorial's code as written), repetitions alternate, and the table gives the median
training throughput of the later epochs (images per second, each epoch's 4x4 picture
included, as the tutorial draws it) with its min-max spread, the seconds a full epoch of
60,000 images takes at that rate, and the ratio to TensorFlow taken repetition by
repetition. ``--train-size`` trains on the first N images, so a repetition takes minutes.

    python experiments/benchmark_generative.py --data-dir DATA [--reps 3] [--epochs 3]
                                               [--train-size 10240]
"""

import argparse
import os
import sys
import tempfile

from benchmark import (
    CONTENDERS_DIR,
    MISSING_EXIT,
    child_env,
    cpu_flags,
    cpu_model,
    markdown_table,
    pair_ratio,
    run_process,
    summarize,
    write_report,
)

# name -> contender script
CONTENDERS = {"fnlearn": "fnlearn_dcgan.py", "TensorFlow": "tf_dcgan.py"}
REFERENCE = "TensorFlow"
FULL_EPOCH = 60_000


def dcgan_run(name: str, args: argparse.Namespace, workdir: str, cache_dir: str) -> dict:
    """One repetition of one contender: images per second over the epochs after the first."""
    command = [sys.executable, str(CONTENDERS_DIR / CONTENDERS[name]),
               "--epochs", str(args.epochs), "--train-size", str(args.train_size),
               "--out", os.path.join(workdir, name)]
    command += ["--data-dir", args.data_dir] if args.data_dir else ["--source", "sample"]
    run = run_process(command, child_env(cache_dir), workdir, timeout_s=args.timeout)
    if run["missing"] or run["returncode"] == MISSING_EXIT:
        return {"status": "missing"}
    if run["returncode"] != 0 or run["result"] is None:
        return {"status": "failed", "stderr": run["stderr_tail"]}
    seconds = run["result"]["epoch_seconds"]
    later = seconds[1:]
    return {"status": "ok", "epoch_seconds": seconds,
            "steady_img_s": args.images * len(later) / sum(later),
            "first_epoch_s": seconds[0],
            "framework_version": run["result"]["framework_version"]}


def table(runs: dict) -> str:
    """Markdown: contender, later-epoch img/s (median, min-max), s per 60,000, ratio."""
    reference = [r.get("steady_img_s") for r in runs.get(REFERENCE, [])]
    rows = []
    for name, contender_runs in runs.items():
        steady = [r["steady_img_s"] for r in contender_runs if r["status"] == "ok"]
        if not steady:
            rows.append([name, contender_runs[0]["status"] if contender_runs else "not run",
                         "", "", ""])
            continue
        stats = summarize(steady)
        first = summarize([r["first_epoch_s"] for r in contender_runs if r["status"] == "ok"])
        ratio = pair_ratio([r.get("steady_img_s") for r in contender_runs], reference)
        rows.append([name, f"{stats['median']:,.0f} ({stats['min']:,.0f}-{stats['max']:,.0f})",
                     f"{FULL_EPOCH / stats['median']:.0f}",
                     f"{first['median']:.1f} ({first['min']:.1f}-{first['max']:.1f})",
                     f"{ratio:.2f}" if ratio else ""])
    return markdown_table(["contender", "img/s, later epochs", "s per 60,000 images",
                           "first epoch s (compile included)", f"× {REFERENCE}"], rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="the first one compiles")
    parser.add_argument("--train-size", type=int, default=10_240,
                        help="images an epoch (a multiple of the batch, 256, is fairest)")
    parser.add_argument("--only", default=None, help="comma-separated contender names")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--out", default="out/benchmark", help="folder for the md and json")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch compiles")
    if args.reps < 1 or args.train_size < 1:
        parser.error("--reps and --train-size must be positive")
    args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    # The sample set has fewer images than asked for: count what an epoch really sees.
    args.images = args.train_size if args.data_dir else min(args.train_size, 1000)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the DCGAN benchmark, write benchmark_generative.md and .json, print the table."""
    args = parse_args(argv)
    names = list(CONTENDERS)
    if args.only:
        wanted = {n.strip().lower() for n in args.only.split(",")}
        names = [n for n in names if n.lower() in wanted]
    runs = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="fnlearn-genbench-") as scratch:
        for rep in range(1, args.reps + 1):
            for name in names:
                run = dcgan_run(name, args, scratch, os.path.join(scratch, f"cache-{rep}"))
                runs[name].append(run)
                shown = (f"{run['steady_img_s']:,.0f} img/s, epochs "
                         + ", ".join(f"{s:.1f}s" for s in run["epoch_seconds"])
                         if run["status"] == "ok" else run["status"])
                if run["status"] == "failed":
                    lines = run["stderr"].strip().splitlines()
                    shown += f": {lines[-1] if lines else 'no error output'}"
                print(f"rep {rep}/{args.reps}  {name:<11} {shown}", flush=True)
    markdown = (f"DCGAN (TensorFlow's tutorial), {args.images:,} images an epoch, "
                f"{args.epochs} epochs (the first left out), {args.reps} reps, "
                f"{cpu_model()} ({cpu_flags()}), {os.cpu_count()} cores\n\n{table(runs)}")
    write_report(args.out, "benchmark_generative", markdown, runs)
    print(markdown)
    return runs


if __name__ == "__main__":
    main()

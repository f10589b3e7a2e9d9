"""Benchmark: the sequence recipes (mnist_rnn's LSTM, the ViT) in fnlearn and PyTorch.

The sequence section of ``benchmark.py`` (``python experiments/benchmark.py --sequences``
runs it), in ``benchmark_convnet.py``'s style: each contender
(``experiments/contenders/*_sequences.py``) runs in its own process, repetitions
alternate, and the table gives the median training throughput (images per second
through ``fit``, or through PyTorch's loop) with its min-max spread, and the ratio to
PyTorch with its default threads (one per core), taken repetition by repetition. An
epoch is training then validation on the same fraction of the test set (as in
``benchmark_convnet.py``); the images counted are the training images. PyTorch with one thread is
shown too: on a machine shared with other work, two threads can wait on each other.

    python experiments/benchmark_sequences.py --data-dir DATA [--reps 3] [--steps 100]
"""

import argparse
import os
import sys

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

# name -> (script, extra arguments)
CONTENDERS = {
    "fnlearn": ("fnlearn_sequences.py", []),
    "PyTorch": ("torch_sequences.py", []),
    "PyTorch, 1 thread": ("torch_sequences.py", ["--threads", "1"]),
}
RECIPES = ("rnn", "vit")
REFERENCE = "PyTorch"
def sequence_run(name: str, recipe: str, args: argparse.Namespace, workdir: str,
                 cache_dir: str) -> dict:
    """One repetition of one contender on one recipe: img/s of the later epochs."""
    script, extra = CONTENDERS[name]
    command = [sys.executable, str(CONTENDERS_DIR / script), "--recipe", recipe,
               "--epochs", str(args.epochs), *extra]
    command += ["--data-dir", args.data_dir] if args.data_dir else ["--source", "sample"]
    if args.steps:
        command += ["--steps", str(args.steps)]
    run = run_process(command, child_env(cache_dir), workdir, timeout_s=args.timeout)
    if run["missing"] or run["returncode"] == MISSING_EXIT:
        return {"status": "missing"}
    if run["returncode"] != 0 or run["result"] is None:
        return {"status": "failed", "stderr": run["stderr_tail"]}
    result = run["result"]
    return {"status": "ok", "steady_img_s": result["steady_img_s"],
            "first_img_s": result["first_img_s"],
            "val_accuracy": result["val_accuracy"],
            "framework_version": result["framework_version"]}


def table(runs: dict) -> str:
    """Markdown: recipe, contender, later-epoch img/s (median, min-max), ratio to PyTorch."""
    rows = []
    for recipe in runs:
        reference = [r.get("steady_img_s") for r in runs[recipe].get(REFERENCE, [])]
        for name, contender_runs in runs[recipe].items():
            steady = [r["steady_img_s"] for r in contender_runs if r["status"] == "ok"]
            if not steady:
                status = contender_runs[0]["status"] if contender_runs else "not run"
                rows.append([recipe, name, status, ""])
                continue
            stats = summarize(steady)
            ratio = pair_ratio([r.get("steady_img_s") for r in contender_runs], reference)
            rows.append([recipe, name,
                         f"{stats['median']:,.0f} ({stats['min']:,.0f}-{stats['max']:,.0f})",
                         f"{ratio:.2f}" if ratio else ""])
    return markdown_table(["recipe", "contender", "img/s, later epochs",
                           f"× {REFERENCE}"], rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="the first one compiles")
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch (0: all)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated")
    parser.add_argument("--only", default=None, help="comma-separated contender names")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--out", default="out/benchmark", help="folder for the md and json")
    args = parser.parse_args(argv)
    args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip() in RECIPES]
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch compiles")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the sequence benchmark, write benchmark_sequences.md and .json, print the table."""
    import tempfile

    args = parse_args(argv)
    names = list(CONTENDERS)
    if args.only:
        wanted = {n.strip().lower() for n in args.only.split(",")}
        names = [n for n in names if n.lower() in wanted]
    runs = {recipe: {name: [] for name in names} for recipe in args.recipes}
    with tempfile.TemporaryDirectory(prefix="fnlearn-seqbench-") as scratch:
        for rep in range(1, args.reps + 1):
            for recipe in args.recipes:
                for name in names:
                    run = sequence_run(name, recipe, args, scratch,
                                       os.path.join(scratch, f"cache-{rep}-{recipe}"))
                    runs[recipe][name].append(run)
                    shown = (f"{run['steady_img_s']:,.0f} img/s" if run["status"] == "ok"
                             else run["status"])
                    if run["status"] == "failed":
                        lines = run["stderr"].strip().splitlines()
                        shown += f": {lines[-1] if lines else 'no error output'}"
                    print(f"rep {rep}/{args.reps}  {recipe:<4} {name:<18} {shown}", flush=True)
    markdown = (f"Sequence recipes, {args.steps or 'all'} steps an epoch, {args.epochs} epochs "
                f"(the first left out), {args.reps} reps, {cpu_model()} ({cpu_flags()}), "
                f"{os.cpu_count()} cores\n\n{table(runs)}")
    write_report(args.out, "benchmark_sequences", markdown, runs)
    print(markdown)
    return runs


if __name__ == "__main__":
    main()

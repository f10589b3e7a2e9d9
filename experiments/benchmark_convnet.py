"""Benchmark: the two MNIST convnet recipes in fnlearn, PyTorch, Keras and a plain JAX loop.

The convnet section of ``benchmark.py`` (``python experiments/benchmark.py --convnet`` runs
it): each contender (``experiments/contenders/*_convnet.py``) runs in its own process,
repetitions alternate (rep 1: every recipe and contender, rep 2: ...), and the table gives
the median training throughput with its min-max spread and the ratio to PyTorch, taken
repetition by repetition. A contender trains ``--epochs`` epochs of training plus
validation (``--steps N``: N steps each, on the first N x batch images, validation scaled
alike); the first epoch holds compilation, the later ones give the steady state.

With ``--policy mixed_bfloat16`` every framework computes in bfloat16 with float32
weights: fnlearn's ``fit(policy=...)``, PyTorch's ``torch.autocast("cpu", torch.bfloat16)``
and Keras's global ``mixed_bfloat16`` policy; fnlearn in float32 runs beside them for its
own ratio, and the plain JAX loop (float32 only) is left out.

    python experiments/benchmark_convnet.py --data-dir DATA [--reps 3] [--steps 200]
        [--policy mixed_bfloat16]
"""

import argparse
import os
import sys

from benchmark import (
    CONTENDERS_DIR,
    MISSING_EXIT,
    child_env,
    cpu_model,
    markdown_table,
    pair_ratio,
    run_process,
    summarize,
    write_report,
)

CONTENDERS = {
    "fnlearn": "fnlearn_convnet.py",
    "PyTorch": "torch_convnet.py",
    "Keras (TensorFlow)": "keras_convnet.py",
    "JAX + Optax loop (lax conv)": "jax_convnet.py",
}
MIXED_CONTENDERS = {  # name: (script, policy) under --policy mixed_bfloat16
    "fnlearn": ("fnlearn_convnet.py", "mixed_bfloat16"),
    "PyTorch": ("torch_convnet.py", "mixed_bfloat16"),
    "Keras (TensorFlow)": ("keras_convnet.py", "mixed_bfloat16"),
    "fnlearn, float32": ("fnlearn_convnet.py", "float32"),
}
RECIPES = ("keras", "torch")
REFERENCE = "PyTorch"


def contenders(policy: str) -> dict[str, tuple[str, str]]:
    """The contenders for ``policy``: name -> (script, the policy it runs under)."""
    if policy == "float32":
        return {name: (script, "float32") for name, script in CONTENDERS.items()}
    return dict(MIXED_CONTENDERS)


def convnet_run(name: str, recipe: str, args: argparse.Namespace, workdir: str,
                cache_dir: str) -> dict:
    """One repetition of one contender on one recipe: img/s of the first and later epochs."""
    script, policy = contenders(args.policy)[name]
    command = [sys.executable, str(CONTENDERS_DIR / script), "--recipe", recipe,
               "--epochs", str(args.epochs), "--policy", policy]
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
            "first_img_s": result["first_img_s"], "val_accuracy": result["val_accuracy"],
            "framework_version": result["framework_version"]}


def table(runs: dict) -> str:
    """Markdown: recipe, contender, steady and first-epoch img/s (median, min-max), ratio."""
    rows = []
    for recipe in RECIPES:
        reference = [r.get("steady_img_s") for r in runs[recipe].get(REFERENCE, [])]
        for name, contender_runs in runs[recipe].items():
            steady = [r["steady_img_s"] for r in contender_runs if r["status"] == "ok"]
            first = [r["first_img_s"] for r in contender_runs if r["status"] == "ok"]
            if not steady:
                status = contender_runs[0]["status"] if contender_runs else "not run"
                rows.append([recipe, name, status, "", ""])
                continue
            cells = []
            for values in (steady, first):
                stats = summarize(values)
                cells.append(f"{stats['median']:,.0f} ({stats['min']:,.0f}-{stats['max']:,.0f})")
            ratio = pair_ratio([r.get("steady_img_s") for r in contender_runs], reference)
            rows.append([recipe, name, *cells, f"{ratio:.2f}" if ratio else ""])
    return markdown_table(["recipe", "contender", "img/s, later epochs", "img/s, 1st epoch",
                           f"× {REFERENCE}"], rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="the first one compiles")
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch (0: all)")
    parser.add_argument("--only", default=None, help="comma-separated contender names")
    parser.add_argument("--policy", choices=("float32", "mixed_bfloat16"), default="float32",
                        help="the precision every contender computes in (see above)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--out", default="out/benchmark", help="folder for the md and json")
    args = parser.parse_args(argv)
    # Contenders run in a scratch folder: a relative data folder must not move with them.
    args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the convnet benchmark, write benchmark_convnet.md and .json, print the table."""
    import tempfile

    args = parse_args(argv)
    names = list(contenders(args.policy))
    if args.only:
        wanted = {n.strip().lower() for n in args.only.split(",")}
        names = [n for n in names if n.lower() in wanted]
    runs = {recipe: {name: [] for name in names} for recipe in RECIPES}
    with tempfile.TemporaryDirectory(prefix="fnlearn-convbench-") as scratch:
        for rep in range(1, args.reps + 1):
            for recipe in RECIPES:
                for name in names:
                    # A fresh compilation cache each time: every fnlearn run compiles.
                    run = convnet_run(name, recipe, args, scratch,
                                      os.path.join(scratch, f"cache-{rep}-{recipe}"))
                    runs[recipe][name].append(run)
                    shown = (f"{run['steady_img_s']:,.0f} img/s" if run["status"] == "ok"
                             else run["status"])
                    if run["status"] == "failed":
                        lines = run["stderr"].strip().splitlines()
                        shown += f": {lines[-1] if lines else 'no error output'}"
                    print(f"rep {rep}/{args.reps}  {recipe:<5} {name:<28} {shown}", flush=True)
    markdown = (f"Convnet recipes, policy {args.policy}, {args.steps or 'all'} steps an epoch, "
                f"{args.epochs} epochs, "
                f"{args.reps} reps, {cpu_model()}, {os.cpu_count()} cores\n\n{table(runs)}")
    name = "benchmark_convnet" + ("" if args.policy == "float32" else f"_{args.policy}")
    write_report(args.out, name, markdown, runs)
    print(markdown)
    return runs


if __name__ == "__main__":
    main()

"""Sweeps that search: successive halving against the full grid, and Optuna's samplers
against random search with the same budget.

``halving``: the learning rate x width grid of ``configs/sweep_lr_width.toml`` (8 x 4) at 40
epochs, trained to the end, and with successive halving (eta 3, ``--min-epochs``). Reports
each sweep's best configuration and validation accuracy, the trial-epochs trained and the
wall time (compilation included), as medians over ``--rounds`` alternating runs.

``samplers``: ``configs/search_tpe.toml`` (64 trials in batches of 16 over learning rate,
width, weight decay and momentum) with search = random, tpe, cmaes and gp (when torch is
installed), over ``--seeds`` search seeds. Reports the best and the median validation
accuracy of each search, and their means over the seeds.

Every sweep runs in a fresh process without a persistent compilation cache, so that each
pays its own compilation.

Run: python experiments/benchmark_search.py halving [--rounds 3] [--min-epochs 4]
     python experiments/benchmark_search.py samplers [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s), for the record."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown"

ONE_SWEEP = """
import json, sys, tempfile
from jaxnn import config, sweep
cfg = config.load(sys.argv[1], sys.argv[2:])
out = sweep.run_sweep(cfg, tempfile.mkdtemp() + "/sweep")
print("RESULT " + json.dumps({"wall_s": out["wall_time_s"], "compile_s": out["compile_time_s"],
    "trial_epochs": out["trial_epochs"], "programs": out["programs_compiled"],
    "best": out["best"] and {k: out["best"][k] for k in ("trial", "values", "val_accuracy")},
    "completed": [r["val_accuracy"] for r in out["results"] if r["status"] == "completed"],
    "rows": [{"values": r["values"], "status": r["status"], "val_accuracy": r["val_accuracy"],
              "epochs": r["epochs"]} for r in out["results"]]}))
"""


def one_sweep(path: str, overrides: list[str]) -> dict:
    """Runs a sweep in a fresh process (no persistent compilation cache) and returns its
    summary."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    overrides = ["output.plots=false", "training.progress=false", *overrides]
    done = subprocess.run([sys.executable, "-c", ONE_SWEEP, path, *overrides], env=env,
                          capture_output=True, text=True, check=False,
                          cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def halving(args) -> None:
    path = os.path.abspath("configs/sweep_lr_width.toml")
    base = [f"training.epochs={args.epochs}"]
    contenders = {
        "full grid": base,
        "successive halving": [*base, f"sweep.pruning={{eta = {args.eta}, "
                               f"min_epochs = {args.min_epochs}}}"],
    }
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, overrides in contenders.items():
            runs[name].append(one_sweep(path, overrides))
    grid_rows = runs["full grid"][0]["rows"]
    full_value = {json.dumps(r["values"], sort_keys=True): r["val_accuracy"] for r in grid_rows}
    grid_best = runs["full grid"][0]["best"]
    total = runs["full grid"][0]["trial_epochs"]
    print(f"{len(grid_rows)} trials x {args.epochs} epochs = {total} trial-epochs")
    print("| sweep | best (lr, width) | its val acc (full training) | trial-epochs | "
          "wall s (median) | compile s | programs |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, results in runs.items():
        best = results[0]["best"]
        key = json.dumps(best["values"], sort_keys=True)
        walls = [r["wall_s"] for r in results]
        print(f"| {name} | {best['values']['learning_rate']}, {best['values']['width']} | "
              f"{full_value[key]:.4f} | {results[0]['trial_epochs']} "
              f"({results[0]['trial_epochs'] / total:.0%}) | {statistics.median(walls):.1f} "
              f"({', '.join(f'{w:.1f}' for w in walls)}) | "
              f"{statistics.median(r['compile_s'] for r in results):.1f} | "
              f"{results[0]['programs']} |")
    found = runs["successive halving"][0]["best"]
    gap = grid_best["val_accuracy"] - full_value[json.dumps(found["values"], sort_keys=True)]
    print(f"halving's pick is {gap * 100:.2f} points of validation accuracy below the grid's "
          "best")


def samplers(args) -> None:
    path = os.path.abspath("configs/search_tpe.toml")
    names = ["random", "tpe", "cmaes"]
    if importlib.util.find_spec("torch") and importlib.util.find_spec("scipy"):
        names.append("gp")
    table: dict[str, list[dict]] = {name: [] for name in names}
    for seed in args.seeds:
        for name in names:
            out = one_sweep(path, [f"sweep.search='{name}'", f"sweep.seed={seed}",
                                   *args.set])
            completed = out["completed"]
            table[name].append({"best": max(completed), "median": statistics.median(completed),
                                "wall_s": out["wall_s"], "programs": out["programs"]})
            print(f"seed {seed} {name}: best {max(completed):.4f} median "
                  f"{statistics.median(completed):.4f} wall {out['wall_s']:.1f} s "
                  f"({out['programs']} programs)", flush=True)
    print("| search | best val acc per seed | mean best | median trial per seed | "
          "mean median | wall s per sweep (median) |")
    print("|---|---|---:|---|---:|---:|")
    for name, rows in table.items():
        bests = ", ".join(f"{r['best']:.4f}" for r in rows)
        medians = ", ".join(f"{r['median']:.4f}" for r in rows)
        print(f"| {name} | {bests} | "
              f"{statistics.mean(r['best'] for r in rows):.4f} | "
              f"{medians} | "
              f"{statistics.mean(r['median'] for r in rows):.4f} | "
              f"{statistics.median(r['wall_s'] for r in rows):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="which", required=True)
    halve = sub.add_parser("halving")
    halve.add_argument("--rounds", type=int, default=3)
    halve.add_argument("--epochs", type=int, default=40)
    halve.add_argument("--eta", type=int, default=3)
    halve.add_argument("--min-epochs", type=int, default=4)
    sample = sub.add_parser("samplers")
    sample.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sample.add_argument("--set", nargs="*", default=[], help="config overrides")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    halving(args) if args.which == "halving" else samplers(args)


if __name__ == "__main__":
    main()

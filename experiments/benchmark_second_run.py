"""The same `jaxnn sweep` run twice: with an empty compile cache, then again.

Each pair runs the command (a fresh process, as a user runs it) on a new cache directory
and then once more on the filled one, and times both whole commands (imports, planning,
training, report and plots included). Sweeps: the quick start (configs/sweep_lr_width.toml,
32 trials) and a CNN sweep (configs/cnn_digits.toml over its first convolution's channels
{8, 16, 32} x 4 learning rates, 5 epochs). Contenders: the jaxnn command as it is (its
sweep keeps whole programs in `jaxnn.executable_cache`) and the same with the sweep's
programs left to JAX's persistent cache alone (as before that cache: a second run still
traces and lowers every program). Pairs alternate; medians, min and max over ``--repeats``
pairs, and the ratio first / again per pair.

Run: python experiments/benchmark_second_run.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = {
    "quick start (32 MLP trials)": ["configs/sweep_lr_width.toml"],
    "CNN channels (12 trials, 5 epochs)": [
        "configs/cnn_digits.toml", "--set", "training.epochs=5", "--set",
        'sweep.grid={"model.layers[0].features" = [8, 16, 32], '
        "learning_rate = [3e-4, 1e-3, 3e-3, 1e-2]}"],
}
# `cli.main` not owning its process leaves the sweep's programs to JAX's cache; the host
# settings are made as the command makes them.
CONTENDERS = {
    "jaxnn": "from jaxnn import cli; cli.console_main()",
    "JAX's cache only": "import sys\nfrom jaxnn import cli, host\nhost.retain_freed_memory()\n"
                        "host.split_cpu(None)\nsys.exit(cli.main())",
}


def timed(code: str, arguments: list[str], cache: str, workdir: str) -> float:
    """Seconds for one `jaxnn sweep` process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, "sweep", *arguments, "--compile-cache", cache,
                    "--workdir", workdir], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[tuple[str, str], list[tuple[float, float]]] = {
        (name, who): [] for name in SWEEPS for who in CONTENDERS}
    with tempfile.TemporaryDirectory(prefix="jaxnn-second-run-") as scratch:
        for repeat in range(args.repeats):
            for (name, who), pairs in times.items():
                where = os.path.join(scratch, f"{len(pairs)}-{name[:5]}-{who[:3]}")
                arguments = SWEEPS[name]
                first, again = (timed(CONTENDERS[who], arguments, where + "-cache",
                                      f"{where}-{k}") for k in ("first", "again"))
                pairs.append((first, again))
                print(f"repeat {repeat}: {name}, {who}: {first:.2f} s, again {again:.2f} s",
                      flush=True)
    print("\n| sweep | contender | empty cache s | again s | first / again |\n"
          "|---|---|---:|---:|---:|")
    for (name, who), pairs in times.items():
        firsts, agains = zip(*pairs, strict=True)
        ratios = [f / a for f, a in pairs]

        def cell(values, digits=2):
            return (f"{statistics.median(values):.{digits}f} "
                    f"[{min(values):.{digits}f}, {max(values):.{digits}f}]")

        print(f"| {name} | {who} | {cell(firsts)} | {cell(agains)} | {cell(ratios)}x |")


if __name__ == "__main__":
    main()

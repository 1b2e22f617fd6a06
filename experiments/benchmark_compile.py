"""Where a sweep program's compile time goes, and what the older XLA CPU emitters save.

1. ``--passes``: compiles the training program of a 32-trial sweep of the digits MLP
   (configs/sweep_lr_width.toml, 5 epochs) under `jax.profiler` and prints the compiler's
   slowest traced stages (HLO passes, fusion emitters, LLVM code generation), summed.
2. Then times whole sweeps (`run_sweep`, compile included) with the sweep's compiler
   options as they are (`jaxnn.sweep.programs.compiler_options`: the older fusion emitters
   where a program's modelled training time is short) against optimisation level 1 alone
   (the options before), alternated, medians: the MLP sweep at 32 and 128 trials (5
   epochs), at 32 trials and 20 epochs, and the CNN channel sweep of
   ``benchmark_sweep.py --channels`` (12 trials, 5 epochs).

3. Or, with ``--cnn-counts C ...``: the CNN group's training program (``benchmark_sweep.py
   --family cnn``) at each channel count C of its first convolution, ``--trials`` trials
   vmapped: lowering and compile seconds and ms per trial and step, medians of repeats.

Run: python experiments/benchmark_compile.py [--passes] [--repeats 2]
     [--cnn-counts 8 16 24 32 [--trials 16]]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import statistics
import tempfile
import time

import benchmark_sweep  # experiments/benchmark_sweep.py: the CNN group's config
import jax
import jax.numpy as jnp

from jaxnn import benchmarking, run, sweep
from jaxnn import config as config_lib
from jaxnn.sweep import programs
from jaxnn.train import HPARAMS, default_hparams, make_train

MLP, CNN = "configs/sweep_lr_width.toml", "configs/cnn_digits.toml"


def lower_trials(cfg, trials: int):
    """``(lowered, args, steps)``: the whole training of ``trials`` copies of ``cfg``'s run
    (default hyperparameters, seeds 0...) vmapped into one program, as a sweep's."""
    trainer = make_train(cfg, run.prepare(cfg), mesh=None)

    def whole(key, hparams, data):
        state, metrics = trainer.run_epochs(trainer.init(key, hparams), hparams,
                                            trainer.epochs, data)
        return state.params, metrics

    one = default_hparams(cfg, trainer.dtype)
    args = (jnp.stack([jax.random.key(seed) for seed in range(trials)]),
            {name: jnp.stack([one[name]] * trials) for name in HPARAMS}, trainer.data)
    lowered = jax.jit(jax.vmap(whole, in_axes=(0, 0, None))).lower(*args)
    return lowered, args, trainer.epochs * trainer.steps_per_epoch


def cnn_counts(counts, trials: int, repeats: int) -> None:
    """Lowering, compile and training time of the CNN group's program at each channel count
    of its first convolution (`benchmark_sweep.py --family cnn`: cnn_digits without
    Dropout, SGD momentum, 3 epochs), ``trials`` trials, on one device."""
    base = benchmark_sweep.cnn_base(3, [], [])
    layers = base.model.layers
    found = collections.defaultdict(list)
    for _ in range(repeats):
        for count in counts:
            cfg = base.replace(model={"layers": ({**layers[0], "features": count},
                                                 *layers[1:])})
            started = time.perf_counter()
            lowered, args, steps = lower_trials(cfg, trials)
            lowering = time.perf_counter() - started
            options = programs.compiler_options()
            started = time.perf_counter()
            compiled = programs.compile_lowered(lowered, options)
            compiling = time.perf_counter() - started
            jax.block_until_ready(compiled(*args))
            started = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            per_step = (time.perf_counter() - started) / trials / steps * 1e3
            found[count].append((lowering, compiling, per_step))
    print(f"CNN group, {trials} trials vmapped, 3 epochs, one device; medians of {repeats}")
    print("| channels | lower s | compile s | ms per trial and step |\n|---:|---:|---:|---:|")
    for count, samples in found.items():
        print(f"| {count} | " + " | ".join(f"{statistics.median(column):.2f}"
                                           for column in zip(*samples, strict=True)) + " |")


def compile_stages(top: int) -> None:
    """The slowest traced stages of compiling the 32-trial MLP sweep program."""
    cfg = config_lib.load(MLP, ["training.progress=false", "training.epochs=5"])
    lowered, _, _ = lower_trials(cfg, 32)
    trace_dir = tempfile.mkdtemp()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        started = time.perf_counter()
        lowered.compile(compiler_options={"xla_backend_optimization_level": 1})
        seconds = time.perf_counter() - started
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as handle:
        trace = json.load(handle)
    totals, counts = collections.Counter(), collections.Counter()
    for event in trace["traceEvents"] if isinstance(trace, dict) else trace:
        if event.get("ph") == "X" and not event["name"].startswith("$"):
            totals[event["name"]] += event.get("dur", 0)
            counts[event["name"]] += 1
    print(f"compiling the 32-trial MLP program (level 1, fusion emitters): {seconds:.2f} s; "
          "traced stages, summed over calls (nested stages overlap; 2 compile threads):")
    for name, micros in totals.most_common(top):
        print(f"  {micros / 1e3:8.1f} ms  x{counts[name]:<4d} {name[:90]}")


def sweeps(repeats: int) -> None:
    as_is = programs.compiler_options

    def before(run_once=False, training_seconds=None):
        del training_seconds  # the options before: optimisation levels only
        return {"xla_backend_optimization_level": 0 if run_once else 1}

    base = ["training.progress=false", "output.plots=false"]
    cnn = config_lib.load(CNN, [*base, "training.epochs=5"])
    cnn = cnn.replace(model={"layers": tuple(s for s in cnn.model.layers
                                             if s["type"] != "Dropout")},
                      sweep={"grid": {"model.layers[0].features": [8, 16, 32],
                                      "learning_rate": [3e-4, 1e-3, 3e-3, 1e-2]}})
    mlp = config_lib.load(MLP, [*base, "training.epochs=5"])
    cases = {
        "MLP, 32 trials, 5 epochs": mlp,
        "MLP, 128 trials, 5 epochs": mlp.replace(sweep={**mlp.sweep, "grid": {
            **mlp.sweep["grid"], "seed": [0, 1, 2, 3]}}),
        "MLP, 32 trials, 20 epochs": config_lib.load(MLP, base),
        "CNN channels, 12 trials, 5 epochs": cnn,
    }
    print("| sweep | options | wall s | compile s | training s |\n|---|---|---:|---:|---:|")
    for label, cfg in cases.items():
        dataset = run.prepare(cfg)
        found: dict[str, list[tuple[float, float]]] = {}
        for _ in range(repeats):
            for name, options in (("level 1 only (before)", before), ("as planned", as_is)):
                programs.compiler_options = options
                try:
                    started = time.perf_counter()
                    out = sweep.run_sweep(cfg, tempfile.mkdtemp(), dataset=dataset)
                    wall = time.perf_counter() - started
                finally:
                    programs.compiler_options = as_is
                found.setdefault(name, []).append((wall, out["compile_time_s"]))
        for name, samples in found.items():
            wall = statistics.median(w for w, _ in samples)
            compiling = statistics.median(c for _, c in samples)
            training = statistics.median(w - c for w, c in samples)
            print(f"| {label} | {name} | {wall:.2f} | {compiling:.2f} | {training:.2f} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", action="store_true", help="profile one compile first")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cnn-counts", type=int, nargs="+", metavar="C",
                        help="instead: the CNN group's program per first-layer channel count")
    parser.add_argument("--trials", type=int, default=16, help="with --cnn-counts")
    benchmarking.add_host_flags(parser)
    args = parser.parse_args()
    host_line = benchmarking.setup_host(args)
    print(f"{jax.devices()[0].platform}; {host_line}")
    if args.cnn_counts:
        cnn_counts(args.cnn_counts, args.trials, args.repeats)
        return
    if args.passes:
        compile_stages(args.top)
    sweeps(args.repeats)


if __name__ == "__main__":
    main()

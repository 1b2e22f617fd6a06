"""What a sweep's per-epoch evaluation costs, in compile time and in run time.

A sweep's training program trains N trials vmapped (`jaxnn.train.Trainer`) and evaluates
each on the validation split after every epoch, for its learning curves, pruning and
ranking. This times that program with the evaluation and without it: the same training
split, the validation split emptied. Both run the MLP of configs/sweep_lr_width.toml
(64 -> 64 -> 64 -> 10 on digits, batch 64, SGD with momentum) with N learning rates and
N seeds (each trial draws its own minibatch orders inside the program; a sweep draws them
before, in its prologue), in the same run, alternated; compile and run seconds apart,
medians.

Run: python experiments/benchmark_evaluation.py [--trials 1 32 128] [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import benchmarking, run
from jaxnn import config as config_lib
from jaxnn.train import HPARAMS, default_hparams, make_train

CONFIG = "configs/sweep_lr_width.toml"


def sweep_program(cfg, dataset, count: int):
    """The compiled program that trains ``count`` trials (learning rates 1e-3 … 1) for the
    config's epochs, and its arguments."""
    trainer = make_train(cfg, dataset, mesh=None)
    epochs = trainer.epochs

    def whole(key, hparams, data):
        state, metrics = trainer.run_epochs(trainer.init(key, hparams), hparams, epochs, data)
        return state.params, metrics

    one = default_hparams(cfg, trainer.dtype)
    hparams = {name: jnp.stack([one[name]] * count) for name in HPARAMS}
    hparams["learning_rate"] = jnp.asarray(np.geomspace(1e-3, 1.0, count), trainer.dtype)
    keys = jnp.stack([jax.random.key(seed) for seed in range(count)])
    args = (keys, hparams, trainer.data)
    started = time.perf_counter()
    compiled = jax.jit(jax.vmap(whole, in_axes=(0, 0, None))).lower(*args).compile()
    return compiled, args, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    benchmarking.add_host_flags(parser)
    args = parser.parse_args()
    host_line = benchmarking.setup_host(args)
    cfg = config_lib.load(CONFIG, ["training.progress=false", f"training.epochs={args.epochs}"])
    with_val = run.prepare(cfg)
    without = with_val._replace(x_val=with_val.x_val[:0], y_val=with_val.y_val[:0])
    print(f"{jax.devices()[0].platform}: {len(with_val.x_train)} training and "
          f"{len(with_val.x_val)} validation examples, {args.epochs} epochs, {args.repeats} "
          f"repeats alternated, medians; {host_line}")
    print("| N | compile s, with / without evaluation | run s, with / without | "
          "evaluation's share of the run |\n|---:|---|---|---:|")
    for count in args.trials:
        compile_s, run_s = {}, {}
        for _ in range(args.repeats):
            for name, dataset in (("with", with_val), ("without", without)):
                program, call_args, seconds = sweep_program(cfg, dataset, count)
                compile_s.setdefault(name, []).append(seconds)
                started = time.perf_counter()
                jax.block_until_ready(program(*call_args))
                run_s.setdefault(name, []).append(time.perf_counter() - started)
        c = {k: statistics.median(v) for k, v in compile_s.items()}
        r = {k: statistics.median(v) for k, v in run_s.items()}
        print(f"| {count} | {c['with']:.2f} / {c['without']:.2f} | {r['with']:.3f} / "
              f"{r['without']:.3f} | {(r['with'] - r['without']) / r['with']:.0%} |",
              flush=True)


if __name__ == "__main__":
    main()

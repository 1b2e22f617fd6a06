"""What driving training in host chunks costs against one whole-run scan.

Runs the same config (default: configs/mlp_digits.toml) as one compiled scan over every
epoch and as the host loop of `jaxnn.run` does it (compiled chunks of epochs, metrics pulled
to the host after each), alternating the two for several repeats. Compile time is excluded
from both; the target is an overhead under 5%.

Run: python experiments/benchmark_chunking.py [CONFIG] [--repeats 7] [--chunk N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from jaxnn import config as config_lib
from jaxnn import run
from jaxnn.train import default_hparams, make_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/mlp_digits.toml")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=0, help="epochs per chunk (0: as jaxnn)")
    args = parser.parse_args()
    cfg = config_lib.load(args.config)
    run.enable_precision(cfg)
    trainer = make_train(cfg, run.prepare(cfg))
    hparams = default_hparams(cfg, trainer.dtype)
    key = jax.random.key(0)
    epochs = trainer.epochs
    chunk = args.chunk or run.chunk_epochs(cfg, trainer.steps_per_epoch)
    whole = trainer.compile(trainer.init(key, hparams), hparams, epochs)
    part = trainer.compile(trainer.init(key, hparams), hparams, chunk)

    def one_scan():
        state, metrics = whole(trainer.init(key, hparams), hparams)
        jax.device_get(metrics)
        return state

    def chunked():
        state = trainer.init(key, hparams)
        for _ in range(epochs // chunk):
            state, metrics = part(state, hparams)
            jax.device_get(metrics)  # what the host loop reads after every chunk
        return state

    times = {"one scan": [], f"chunks of {chunk}": []}
    for _ in range(args.repeats):
        for name, fn in zip(times, (one_scan, chunked), strict=True):
            start = time.perf_counter()
            jax.block_until_ready(fn().params)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["one scan"])
    print(f"{args.config}: {epochs} epochs x {trainer.steps_per_epoch} steps; "
          f"{args.repeats} alternating repeats; compile excluded")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:14s} median {median * 1e3:8.1f} ms  (min {min(samples) * 1e3:.1f}, "
              f"max {max(samples) * 1e3:.1f})  ratio {median / base:.3f}")


if __name__ == "__main__":
    main()

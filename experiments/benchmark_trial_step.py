"""Per-trial cost of a train step, vmapped over N trials against one trial alone.

The step is jaxnn's (`jaxnn.train.make_step`, `jax.grad`) for the digits MLP
64 -> width -> width -> 10 (ReLU, softmax cross-entropy, SGD with momentum, batch 64), the
step a sweep's training program repeats. For each width it times, in the same run and
interleaved (`jaxnn.benchmarking.compare`):

* the step of one trial, jitted (``solo``);
* the step of N trials under ``jax.vmap`` (each trial its own params, optimizer state and
  learning rate), jitted, with one shared minibatch (trials of one seed: what a sweep's
  learning-rate x width grid trains) and with a minibatch per trial (trials of N seeds);
* the latter with its trial axis sharded over the CPU's devices, as a sweep shards it when
  ``jaxnn sweep`` has split the CPU into one device per core (``--cpu-devices``, default;
  ``--cpu-devices 1``: one device, no such row).

It prints the per-trial time (a vmapped call's time over N), its speed-up over solo, and the
achieved GFLOP/s (6 x batch x the weights' multiply-adds per step: forward, and the two
backward matmuls) beside a plain float32 matmul's rate measured in the same run.

Run: python experiments/benchmark_trial_step.py [--widths 16 64 128 512] [--trials 8 32 128]
     [--rounds 7] [--calls 10] [--default-malloc] [--cpu-devices N]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnn import Dense, Relu, benchmarking, losses, serial
from jaxnn.train import make_step

BATCH, INPUTS, CLASSES, MOMENTUM = 64, 64, 10, 0.9


def step_flops(width: int) -> float:
    """Multiply-adds of the forward pass times 2 (FLOPs) times 3 (forward, dx, dw)."""
    macs = BATCH * (INPUTS * width + width * width + width * CLASSES)
    return 6.0 * macs


def trial_step(width: int):
    """``(init, step)`` for one trial: ``init(key) -> (params, opt_state)`` and
    ``step(params, opt_state, lr, x, y) -> (params, opt_state, loss)``."""
    net = serial(Dense(width), Relu(), Dense(width), Relu(), Dense(CLASSES))
    _, _, no_state = net.init(jax.random.key(0), (None, INPUTS))  # () per layer

    def init(key):
        _, params, _ = net.init(key, (None, INPUTS))
        return params, optax.sgd(1.0, momentum=MOMENTUM).init(params)

    def step(params, opt_state, lr, x, y):
        train_step = make_step(net, losses.softmax_cross_entropy,
                               optax.sgd(lr, momentum=MOMENTUM))
        params, _, opt_state, value, _ = train_step(params, no_state, opt_state, x, y)
        return params, opt_state, value

    return init, step


def matmul_rate(rounds: int, calls: int) -> float:
    """GFLOP/s of a jitted 512 x 512 x 512 float32 matmul on this machine, now."""
    a = jax.random.normal(jax.random.key(0), (512, 512), jnp.float32)
    timing = benchmarking.compare({"matmul": (jax.jit(jnp.matmul), (a, a))}, rounds=rounds,
                                  calls_per_round=calls)["matmul"]
    return 2 * 512**3 / timing.median_us / 1e3


def contenders(width: int, counts: list[int]) -> dict:
    init, step = trial_step(width)
    keys = jax.random.split(jax.random.key(1), max(counts))
    x = jax.random.normal(jax.random.key(2), (max(counts), BATCH, INPUTS), jnp.float32)
    y = jax.random.randint(jax.random.key(3), (max(counts), BATCH), 0, CLASSES)
    lrs = jnp.linspace(0.01, 0.1, max(counts), dtype=jnp.float32)
    params, opt_state = jax.vmap(init)(keys)
    first = jax.tree.map(lambda a: a[0], (params, opt_state))
    out = {f"w{width} solo": (jax.jit(step), (*first, lrs[0], x[0], y[0]))}
    shared = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None, None)))  # compiled per N
    apart = jax.jit(jax.vmap(step))
    devices = jax.device_count()
    split = NamedSharding(Mesh(np.array(jax.devices()), ("trials",)), PartitionSpec("trials"))
    for count in counts:
        cut = jax.tree.map(lambda a, n=count: a[:n], (params, opt_state))
        out[f"w{width} N={count} shared"] = (shared, (*cut, lrs[:count], x[0], y[0]))
        out[f"w{width} N={count} apart"] = (apart, (*cut, lrs[:count], x[:count], y[:count]))
        if devices > 1 and count % devices == 0:  # the trial axis sharded, as a sweep does
            out[f"w{width} N={count} {kinds()[-1]}"] = (apart, jax.device_put(
                (*cut, lrs[:count], x[:count], y[:count]), split))
    return out


def kinds() -> tuple[str, ...]:
    """The vmapped contenders: one minibatch shared, one per trial, and one per trial
    with the trials split over the devices (when there are several)."""
    split = (f"apart, {jax.device_count()} devices",) if jax.device_count() > 1 else ()
    return ("shared", "apart", *split)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64, 128, 512])
    parser.add_argument("--trials", type=int, nargs="+", default=[8, 32, 128])
    benchmarking.add_timing_flags(parser)
    benchmarking.add_host_flags(parser, cpu_devices=True)
    args = parser.parse_args()
    host_line = benchmarking.setup_host(args)
    rate = matmul_rate(args.rounds, args.calls)
    print(f"{jax.devices()[0].platform}, float32; plain 512^3 matmul: {rate:.0f} GFLOP/s; "
          f"median of {args.rounds} rounds of {args.calls} calls; {host_line}")
    print("| width | step MFLOP | solo µs (GFLOP/s) | N | minibatch | per trial µs | "
          "solo / per trial | GFLOP/s |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|")
    for width in args.widths:
        timings = benchmarking.compare(contenders(width, args.trials), rounds=args.rounds,
                                       calls_per_round=args.calls)
        flops = step_flops(width)
        solo = timings[f"w{width} solo"].median_us
        for count in args.trials:
            for kind in kinds():
                if f"w{width} N={count} {kind}" not in timings:
                    continue
                per_trial = timings[f"w{width} N={count} {kind}"].median_us / count
                print(f"| {width} | {flops / 1e6:.2f} | {solo:.0f} ({flops / solo / 1e3:.1f}) "
                      f"| {count} | {kind} | {per_trial:.1f} | {solo / per_trial:.2f}x | "
                      f"{flops / per_trial / 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()

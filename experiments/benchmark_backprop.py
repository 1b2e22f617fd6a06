"""Jitted manual (delta-rule) gradients against jitted jax.grad, in the same run.

Workloads: the MLP 784-512-512-10 (ReLU, softmax cross-entropy, batch 128) and the CNN of
the performance issue (28x28x1: Conv 3x3x32 SAME, ReLU, MaxPool 2, Conv 3x3x64 SAME, ReLU,
MaxPool 2, Flatten, Dense 10; batch 128), float32. Prints medians over interleaved rounds
and the ratio manual / jax.grad (target: at most 1.5).

Run: python experiments/benchmark_backprop.py [--rounds 7] [--calls 20] [--default-malloc]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import jaxnn
from jaxnn import benchmarking

WORKLOADS = {
    "mlp": (lambda: jaxnn.serial(jaxnn.Dense(512), jaxnn.Relu(), jaxnn.Dense(512),
                                 jaxnn.Relu(), jaxnn.Dense(10)), (784,)),
    "cnn": (lambda: jaxnn.serial(
        jaxnn.Conv2D(32, 3), jaxnn.Relu(), jaxnn.MaxPool2D(2),
        jaxnn.Conv2D(64, 3), jaxnn.Relu(), jaxnn.MaxPool2D(2),
        jaxnn.Flatten(), jaxnn.Dense(10)), (28, 28, 1)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmarking.add_timing_flags(parser, calls=20)
    parser.add_argument("--batch", type=int, default=128)
    benchmarking.add_host_flags(parser)
    args = parser.parse_args()
    host_line = benchmarking.setup_host(args)
    loss = jaxnn.softmax_cross_entropy
    print(f"devices: {jax.devices()}; {host_line}")
    for name, (build, shape) in WORKLOADS.items():
        net = build()
        _, params, state = net.init(jax.random.key(0), (None, *shape))
        x = jax.random.normal(jax.random.key(1), (args.batch, *shape), jnp.float32)
        y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)

        def autodiff(p, x, y, net=net, state=state):
            return jax.value_and_grad(lambda q: loss(net.apply(q, state, x)[0], y))(p)

        def manual(p, x, y, net=net, state=state):
            return jaxnn.manual.value_and_grad(net, loss, p, state, x, y)

        timings = benchmarking.compare(
            {"jax.grad": (jax.jit(autodiff), (params, x, y)),
             "manual": (jax.jit(manual), (params, x, y))},
            rounds=args.rounds, calls_per_round=args.calls)
        print(f"\n{name} (batch {args.batch}, float32): value and gradient")
        print(benchmarking.table(timings, "jax.grad"))


if __name__ == "__main__":
    main()

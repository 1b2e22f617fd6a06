"""Conv2D's CPU lowering: Winograd's F(2x2, 3x3) against XLA's direct convolution, same run.

For 3x3 stride-1 SAME convolutions at several input-channel counts, times the jitted
forward and the jitted forward + both gradients (Conv2D's rules: Winograd's shares one
``A dY A^T`` between ``dx`` and ``dw``; the direct one is XLA's convolution for ``dx`` and
one matmul per filter offset for ``dw``). Prints medians over interleaved rounds and the
ratio Winograd / direct; where it is below 1 Winograd wins. Conv2D uses Winograd on CPU
from `jaxnn.layers._winograd.MIN_CHANNELS` input channels on.

Run: python experiments/benchmark_conv.py [--rounds 7] [--calls 10] [--default-malloc]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax import lax

from jaxnn import benchmarking
from jaxnn.layers import _winograd, conv

PADS = ((1, 1), (1, 1))
# (height = width, input channels, output channels): B's two convolutions and neighbours.
SHAPES = [(28, 1, 32), (28, 4, 32), (14, 8, 64), (14, 16, 64), (14, 24, 64), (14, 32, 64),
          (7, 64, 128)]


def direct(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), PADS, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def winograd(x, w):
    return _winograd.conv(x, w, PADS)


def direct_gradients(x, w, dy):
    """Conv2D's rule without Winograd: dx by XLA's convolution, dw by one matmul per offset."""
    dx = lax.conv_general_dilated(dy, w[::-1, ::-1], (1, 1), PADS,
                                  dimension_numbers=("NHWC", "HWOI", "NHWC"))
    return dx, conv._filter_gradient(x, dy, (3, 3), (1, 1), PADS, dy.shape[1:3])


def direct_train(x, w, dy):
    return direct(x, w), direct_gradients(x, w, dy)


def winograd_train(x, w, dy):
    return winograd(x, w), _winograd.gradients(x, w, dy, PADS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmarking.add_timing_flags(parser)
    parser.add_argument("--batch", type=int, default=128)
    benchmarking.add_host_flags(parser)
    args = parser.parse_args()
    host_line = benchmarking.setup_host(args)  # before JAX starts its threads
    print(f"devices: {jax.devices()}; {host_line}; "
          f"Conv2D uses Winograd from {_winograd.MIN_CHANNELS} input channels")
    print(f"\n{'size':>5} {'in':>4} {'out':>4}  {'forward µs (direct, Winograd, ratio)':>38}"
          f"  {'forward + gradients µs':>30}")
    for size, cin, cout in SHAPES:
        keys = jax.random.split(jax.random.key(size * cin + cout), 3)
        x = jax.random.normal(keys[0], (args.batch, size, size, cin), jnp.float32)
        w = jax.random.normal(keys[1], (3, 3, cin, cout), jnp.float32)
        dy = jax.random.normal(keys[2], (args.batch, size, size, cout), jnp.float32)

        timings = benchmarking.compare(
            {"direct": (jax.jit(direct), (x, w)),
             "winograd": (jax.jit(winograd), (x, w)),
             "direct+grad": (jax.jit(direct_train), (x, w, dy)),
             "winograd+grad": (jax.jit(winograd_train), (x, w, dy))},
            rounds=args.rounds, calls_per_round=args.calls)
        row = f"{size:5d} {cin:4d} {cout:4d}"
        for plain, fast in (("direct", "winograd"), ("direct+grad", "winograd+grad")):
            a, b = timings[plain].median_us, timings[fast].median_us
            row += f"  {a:10,.0f} {b:10,.0f} {b / a:8.2f}x"
        print(row, flush=True)


if __name__ == "__main__":
    main()

"""Conv2D's CPU lowerings: XLA's direct convolution, Winograd's F(2x2, 3x3) and im2col.

For 3x3 stride-1 SAME convolutions at several input-channel counts, times the jitted
forward and the jitted forward + both gradients (Conv2D's rules: Winograd's shares one
``A dY A^T`` between ``dx`` and ``dw``; the direct one is XLA's convolution for ``dx`` and
one matmul per filter offset for ``dw``). Prints medians over interleaved rounds and the
ratio Winograd / direct; where it is below 1 Winograd wins. Conv2D uses Winograd on CPU
from `jaxnn.layers._winograd.MIN_CHANNELS` input channels on (`LARGE_MIN_CHANNELS` on images of
at least `LARGE_SIDE` x `LARGE_SIDE`).

With --in-scan: each lowering's forward and rule inside a `lax.scan` of training-like steps
(the filter updated from its gradient at every step), as a training program runs it, one
trial alone and N trials under `jax.vmap` (each its own input and filter, as a sweep's
trials), at batch 64 and several kernel sizes and strides; per trial and step. Conv2D uses
Winograd on CPU where it applies and im2col elsewhere (float32 and float64).

Run: python experiments/benchmark_conv.py [--rounds 7] [--calls 10] [--default-malloc]
     [--in-scan [--trials 8] [--steps 10] [--sizes 8 14 ...]]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax import lax

from jaxnn import benchmarking
from jaxnn.layers import _im2col, _spatial, _winograd, conv

PADS = ((1, 1), (1, 1))
# --in-scan: (height = width, input channels, output channels, kernel, stride): the digits
# CNN's two convolutions, workload B's, and neighbours.
SCAN_SHAPES = [(8, 1, 16, 3, 1), (8, 8, 32, 3, 1), (8, 16, 32, 3, 1), (8, 24, 32, 3, 1),
               (8, 32, 32, 3, 1), (8, 48, 32, 3, 1), (28, 1, 32, 3, 1), (28, 4, 32, 3, 1),
               (28, 1, 32, 5, 1), (14, 16, 64, 3, 1), (14, 32, 64, 3, 1), (14, 16, 32, 3, 2),
               (7, 64, 128, 3, 1), (16, 16, 16, 3, 1), (16, 16, 32, 3, 1), (32, 16, 16, 3, 1),
               (32, 8, 16, 3, 1)]
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


def scan_lowerings(kernel: int, stride: int) -> dict:
    """``{name: (forward(x, w) -> y, rule(x, w, dy) -> (dx, dw))}`` for the lowerings a
    shape can take."""
    strides = (stride, stride)

    def pads(x):
        return _spatial.explicit_pads("SAME", x.shape[1:3], (kernel, kernel), strides)

    def direct_forward(x, w):
        return lax.conv_general_dilated(x, w, strides, pads(x), dimension_numbers=_spatial.NHWC)

    def direct_rule(x, w, dy):  # Conv2D's rule below Winograd, without im2col
        dx = lax.conv_general_dilated(
            dy, w[::-1, ::-1], (1, 1), [(kernel - 1 - lo, n - ((o - 1) * stride + 1) + lo)
                                        for n, o, (lo, _) in zip(x.shape[1:3], dy.shape[1:3],
                                                                 pads(x), strict=True)],
            lhs_dilation=strides, dimension_numbers=("NHWC", "HWOI", "NHWC"))
        return dx, conv._filter_gradient(x, dy, (kernel, kernel), strides, pads(x),
                                         dy.shape[1:3])

    out = {"direct": (direct_forward, direct_rule),
           "im2col": (lambda x, w: _im2col.conv(x, w, strides, pads(x)),
                      lambda x, w, dy: _im2col.gradients(x, w, dy, strides, pads(x)))}
    if (kernel, stride) == (3, 1):
        out["winograd"] = (lambda x, w: _winograd.conv(x, w, pads(x)),
                           lambda x, w, dy: _winograd.gradients(x, w, dy, pads(x)))
    return out


def scanned(forward, rule, steps: int):
    """``steps`` training-like steps of one trial: the output's tanh as its gradient, the
    filter updated from its gradient each step."""

    def run(x, w):
        def step(carry, _):
            w, total = carry
            dx, dw = rule(x, w, jnp.tanh(forward(x, w)))
            return (w - 1e-4 * dw, total + jnp.sum(dx)), None
        return lax.scan(step, (w, jnp.zeros((), x.dtype)), None, length=steps)[0]

    return run


def in_scan(args) -> None:
    """The lowerings inside a scan, solo and vmapped over ``args.trials`` trials."""
    print(f"batch {args.batch}, {args.steps} steps per call; µs per trial and step; "
          f"Conv2D's choice on CPU marked *")
    print(f"\n{'size':>5} {'in':>4} {'out':>4} {'k':>2} {'s':>2}  "
          f"{'solo: direct, im2col, Winograd':>32}  {f'vmapped N={args.trials}':>32}")
    for size, cin, cout, kernel, stride in SCAN_SHAPES:
        if args.sizes and size not in args.sizes:
            continue
        keys = jax.random.split(jax.random.key(size * cin + cout), 2)
        x = jax.random.normal(keys[0], (args.trials, args.batch, size, size, cin), jnp.float32)
        w = 0.1 * jax.random.normal(keys[1], (args.trials, kernel, kernel, cin, cout))
        contenders = {}
        for name, (forward, rule) in scan_lowerings(kernel, stride).items():
            run = scanned(forward, rule, args.steps)
            contenders[f"solo {name}"] = (jax.jit(run), (x[0], w[0]))
            contenders[f"vmap {name}"] = (jax.jit(jax.vmap(run)), (x, w))
        timings = benchmarking.compare(contenders, rounds=args.rounds,
                                       calls_per_round=args.calls)
        chosen = ("winograd" if _winograd.applies((kernel,) * 2, (stride,) * 2, x[0])
                  else "im2col")
        row = f"{size:5d} {cin:4d} {cout:4d} {kernel:2d} {stride:2d}"
        for kind, per in (("solo", args.steps), ("vmap", args.steps * args.trials)):
            cells = [f"{timings[f'{kind} {n}'].median_us / per:,.0f}"
                     + ("*" if n == chosen else "") if f"{kind} {n}" in timings else "-"
                     for n in ("direct", "im2col", "winograd")]
            row += "  " + " ".join(f"{c:>10}" for c in cells)
        print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmarking.add_timing_flags(parser)
    parser.add_argument("--batch", type=int, default=None,
                        help="default 128; 64 (a sweep's) with --in-scan")
    parser.add_argument("--in-scan", action="store_true")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="with --in-scan: only the shapes of these image sizes")
    benchmarking.add_host_flags(parser)
    args = parser.parse_args()
    host_line = benchmarking.setup_host(args)  # before JAX starts its threads
    if args.in_scan:
        args.batch = args.batch or 64
        print(f"devices: {jax.devices()}; {host_line}")
        in_scan(args)
        return
    args.batch = args.batch or 128
    print(f"devices: {jax.devices()}; {host_line}; "
          f"Conv2D uses Winograd from {_winograd.MIN_CHANNELS} input channels "
          f"({_winograd.LARGE_MIN_CHANNELS} from {_winograd.LARGE_SIDE}x{_winograd.LARGE_SIDE})")
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

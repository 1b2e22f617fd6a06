"""Dense's CPU gradient layout: ``[x^T; 1] @ dy`` against the plain ``x^T dy``, same run.

On CPU, a float32 `jaxnn.Dense` takes its weight and bias gradients from one matmul with a
copy of its input transposed and topped with a row of ones (`jaxnn.layers._affine`). This
script times workload A's train step (`benchmark.py`: MLP 784-512-512-10, batch 128, SGD
momentum) with that layout and with the plain formulas (``x^T dy`` and ``sum_batch dy``,
what JAX's own gradient of ``x @ w + b`` computes), for `jax.grad` and for the manual
rules, beside raw JAX; then the parameter gradients alone for A's two large layers. The
plain variant is traced with `_affine.applies` answering no. Prints medians over
interleaved rounds and each fast variant's ratio to its plain twin, taken round by round.

Run: python experiments/benchmark_dense.py [--rounds 21] [--calls 10] [--default-malloc]
"""

from __future__ import annotations

import argparse
import contextlib

import benchmark  # experiments/benchmark.py: the workloads and contenders
import jax
import jax.numpy as jnp

from jaxnn import benchmarking
from jaxnn.layers import _affine


@contextlib.contextmanager
def plain_dense():
    """Dense's gradients by the plain formulas for whatever is traced inside."""
    applies = _affine.applies
    _affine.applies = lambda *arrays: False
    try:
        yield
    finally:
        _affine.applies = applies


def traced(contender, plain: bool):
    """``contender`` (function, args), called once so that it is traced now."""
    fn, args = contender
    with plain_dense() if plain else contextlib.nullcontext():
        jax.block_until_ready(fn(*args))
    return fn, args


def parameter_gradients(x, dy):
    """A fresh jitted `_affine.parameter_gradients` with a bias, and its arguments (traced
    at its first call, so `traced` picks the formulas)."""
    return jax.jit(lambda a, d: _affine.parameter_gradients(a, d, (d.shape[1],))), (x, dy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmarking.add_timing_flags(parser, rounds=21)
    benchmarking.add_host_flags(parser)
    args = parser.parse_args()
    host_line = benchmarking.setup_host(args)  # before JAX starts its threads
    print(f"devices: {jax.devices()}; {host_line}")
    batch = benchmark.BATCH["A"]
    x = jax.random.normal(jax.random.key(2), (batch, benchmark.MLP_SIZES["A"][0]))
    y = jax.random.randint(jax.random.key(3), (batch,), 0, 10)
    steps = {"raw JAX": traced(benchmark.contender_raw("A", x, y), plain=False)}
    for backprop in ("autodiff", "manual"):
        for plain in (False, True):
            name = f"{backprop}, {'x^T dy' if plain else '[x^T; 1] @ dy'}"
            steps[name] = traced(benchmark.contender_jaxnn("A", x, y, backprop), plain)
    timings = benchmarking.compare(steps, rounds=args.rounds, calls_per_round=args.calls)
    print(f"\nworkload A train step (batch {batch}, float32)")
    print(benchmarking.table(timings, "raw JAX"))
    for backprop in ("autodiff", "manual"):
        ratio = benchmarking.paired_ratio(timings, f"{backprop}, [x^T; 1] @ dy",
                                          f"{backprop}, x^T dy")
        print(f"  {backprop}: [x^T; 1] @ dy / x^T dy = {ratio.median:.3f} round by round "
              f"(faster in {ratio.faster_rounds} of {ratio.rounds})")

    print("\nparameter gradients alone (weight and bias)")
    for n_in, n_out in ((784, 512), (512, 512)):
        keys = jax.random.split(jax.random.key(n_in + n_out))
        layer_x = jax.random.normal(keys[0], (batch, n_in), jnp.float32)
        dy = jax.random.normal(keys[1], (batch, n_out), jnp.float32)
        timings = benchmarking.compare(
            {"x^T dy": traced(parameter_gradients(layer_x, dy), plain=True),
             "[x^T; 1] @ dy": traced(parameter_gradients(layer_x, dy), plain=False)},
            rounds=args.rounds, calls_per_round=args.calls)
        ratio = benchmarking.paired_ratio(timings, "[x^T; 1] @ dy", "x^T dy")
        print(f"  ({batch}, {n_in}) -> {n_out}: x^T dy {timings['x^T dy'].median_us:,.0f} µs, "
              f"[x^T; 1] @ dy {timings['[x^T; 1] @ dy'].median_us:,.0f} µs, "
              f"ratio {ratio.median:.3f}")


if __name__ == "__main__":
    main()

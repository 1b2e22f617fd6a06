"""Where one train step's time goes: the XLA operations of a jitted step, slowest first.

Runs workload A, B or E of `benchmark.py` (jaxnn's `jax.grad` step) a few times under
`jax.profiler`, reads the Perfetto trace it writes and prints each compiled operation's mean
milliseconds per step with the HLO instruction's shape and source op, so that a slow
lowering (a copy, a convolution, a reduction) can be named.

Run: python experiments/profile_step.py [--workload A|B|E] [--backprop autodiff|manual] [--steps 5]
     [--scan K] [--top 25] [--default-malloc]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

import benchmark  # experiments/benchmark.py: the workloads and contenders
import jax

from jaxnn import benchmarking

# Trace events that are not XLA operations (the executor, Python frames, the profiler).
_NOT_OPS = re.compile(r"^(\$|ThunkExecutor|PjitFunction|TaskDispatcher)")


def op_times(step, args, steps: int) -> collections.Counter:
    """Total microseconds per traced operation name over ``steps`` calls of ``step``."""
    jax.block_until_ready(step(*args))  # compile outside the trace
    trace_dir = tempfile.mkdtemp()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            jax.block_until_ready(step(*args))
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as handle:
        trace = json.load(handle)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not _NOT_OPS.match(event["name"]):
            totals[event["name"]] += event.get("dur", 0)
    return totals


def describe(hlo_text: str, name: str) -> str:
    """The shape and source op (metadata op_name) of HLO instruction ``name``."""
    for line in hlo_text.splitlines():
        if re.match(rf"\s*(ROOT )?%?{re.escape(name)} = ", line):
            shape = line.split("=", 1)[1].split(" fusion(")[0].split("(")[0].strip()
            source = re.search(r'op_name="([^"]+)"', line)
            return f"{shape[:48]:48s} {source.group(1)[-60:] if source else ''}"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["A", "B", "E"], default="B")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--backprop", choices=["autodiff", "manual"], default="autodiff",
                        help="jaxnn's jax.grad step, or its manual delta rules")
    parser.add_argument("--scan", type=int, default=0, metavar="K",
                        help="profile K steps in one lax.scan (`benchmark.in_scan`), as a "
                             "training run compiles them")
    benchmarking.add_host_flags(parser)
    args = parser.parse_args()
    host_line = benchmarking.setup_host(args)
    x = jax.random.normal(jax.random.key(2), benchmark.input_shape(args.workload))
    y = jax.random.randint(jax.random.key(3), (x.shape[0],), 0, 10)
    step, step_args = benchmark.contender_jaxnn(args.workload, x, y, args.backprop)
    if args.scan:
        step, step_args = benchmark.in_scan(step, step_args, args.scan)
    hlo_text = step.lower(*step_args).compile().as_text()
    totals = op_times(step, step_args, args.steps)
    steps = args.steps * max(args.scan, 1)
    total_ms = sum(totals.values()) / steps / 1e3
    where = f", in a scan of {args.scan}" if args.scan else ""
    print(f"workload {args.workload} ({args.backprop}{where}) on {jax.devices()[0].platform}: "
          f"{total_ms:.1f} ms of operations per step ({steps} steps traced; {host_line}); "
          "slowest first")
    for name, micros in totals.most_common(args.top):
        ms = micros / steps / 1e3
        print(f"  {ms:7.2f} ms {ms / total_ms:6.1%}  {name[:32]:32s} {describe(hlo_text, name)}")


if __name__ == "__main__":
    main()

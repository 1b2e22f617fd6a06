"""Timing helpers for the benchmarks in `experiments/`: medians over interleaved rounds."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from jaxnn import host


class Timing(NamedTuple):
    """Per-call wall times of one contender, in microseconds, and its first-call time.

    ``rounds_us`` holds the per-call time of every round, in round order, so that two
    contenders of one `compare` can be paired round by round (`paired_ratio`).
    """

    median_us: float
    min_us: float
    max_us: float
    first_call_s: float
    rounds_us: tuple[float, ...] = ()


class PairedRatio(NamedTuple):
    """One contender's time over another's, taken within each round of the same `compare`."""

    median: float
    faster_rounds: int
    rounds: int


def compare(
    contenders: Mapping[str, tuple[Callable[..., Any], tuple]],
    *,
    rounds: int = 7,
    calls_per_round: int = 20,
) -> dict[str, Timing]:
    """Times several jitted functions against each other in the same process.

    Each contender is called once (trace + compile + run: ``first_call_s``), then the
    contenders take turns, round by round, in a fresh random order each round (seeded), so
    that machine noise and neighbour effects hit them alike: e.g. PyTorch's OpenMP threads
    keep spinning for a while after its step and slow whatever runs next. Each round
    times ``calls_per_round`` back-to-back calls and blocks on the last result.

    Args:
      contenders: name -> (function, args).
      rounds: interleaved rounds; the statistics are over rounds.
      calls_per_round: calls per timed round.

    Returns:
      name -> `Timing` (per-call median, min and max over rounds, and each round's time).
    """
    first = {}
    for name, (fn, args) in contenders.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        first[name] = time.perf_counter() - start
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    shuffler = random.Random(0)
    for _ in range(rounds):
        shuffler.shuffle(names)  # A rotation would keep each contender's neighbours.
        for name in names:
            fn, args = contenders[name]
            start = time.perf_counter()
            for _ in range(calls_per_round):
                out = fn(*args)
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / calls_per_round * 1e6)
    return {
        name: Timing(statistics.median(s), min(s), max(s), first[name], tuple(s))
        for name, s in samples.items()
    }


def per_call(timing: Timing, calls: int) -> Timing:
    """``timing`` of a function that makes ``calls`` calls, as the time of one of them (the
    first-call time stays the whole function's: it holds the compile)."""
    return timing._replace(median_us=timing.median_us / calls, min_us=timing.min_us / calls,
                           max_us=timing.max_us / calls,
                           rounds_us=tuple(t / calls for t in timing.rounds_us))


def paired_ratio(timings: Mapping[str, Timing], name: str, other: str) -> PairedRatio:
    """``name``'s time over ``other``'s, round by round: the median ratio and the number of
    rounds where ``name`` was faster.

    Both ran within the same round, a second or so apart, so a slow spell of the machine
    that spans a round cancels from the ratio, where it would not from a ratio of medians.
    """
    ours, theirs = timings[name].rounds_us, timings[other].rounds_us
    if not ours or len(ours) != len(theirs):
        raise ValueError(f"paired_ratio: {name!r} and {other!r} need the rounds of one compare")
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return PairedRatio(statistics.median(ratios), sum(r < 1 for r in ratios), len(ratios))


def table(timings: Mapping[str, Timing], baseline: str) -> str:
    """A printable table of timings with each contender's ratio to ``baseline``."""
    from jaxnn._table import format_table

    base = timings[baseline].median_us
    rows = [
        (name, f"{t.median_us:,.0f}", f"{t.min_us:,.0f}", f"{t.max_us:,.0f}",
         f"{t.median_us / base:.3f}", f"{t.first_call_s:.2f}")
        for name, t in timings.items()
    ]
    return format_table(
        ("contender", "median µs", "min µs", "max µs", f"/ {baseline}", "first call s"),
        rows, right=(1, 2, 3, 4, 5),
    )


def paired_table(timings: Mapping[str, Timing], name: str) -> str:
    """A printable table of ``name``'s `paired_ratio` to every other contender."""
    from jaxnn._table import format_table

    rows = []
    for other in timings:
        if other != name:
            ratio = paired_ratio(timings, name, other)
            rows.append((other, f"{ratio.median:.3f}",
                         f"{ratio.faster_rounds} of {ratio.rounds}"))
    return format_table(("against", f"{name} / it", "rounds faster"), rows, right=(1, 2))


def add_timing_flags(parser: argparse.ArgumentParser, *, rounds: int = 7,
                     calls: int = 10) -> None:
    """Adds ``--rounds`` and ``--calls`` (the arguments of `compare`) to a benchmark's
    command line, with these defaults."""
    parser.add_argument("--rounds", type=int, default=rounds,
                        help="interleaved rounds; medians, min and max are over rounds")
    parser.add_argument("--calls", type=int, default=calls,
                        help="back-to-back calls timed together in each round")


def add_host_flags(parser: argparse.ArgumentParser, cpu_devices: bool = False) -> None:
    """Adds ``--default-malloc`` to a benchmark's command line (see `setup_host`), and with
    ``cpu_devices`` ``--cpu-devices`` (a sweep benchmark: the CPU split as ``jaxnn sweep``
    splits it)."""
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is, instead of the settings of "
                             "jaxnn.host.retain_freed_memory that the jaxnn command uses")
    if cpu_devices:
        parser.add_argument("--cpu-devices", type=int, default=0, metavar="N",
                            help="split the CPU into N devices, as `jaxnn sweep "
                                 "--cpu-devices` does (default 0: one per core, as `jaxnn "
                                 "sweep`; 1: one device)")


def setup_host(args: argparse.Namespace) -> str:
    """Applies the host settings the flags ask for, before any contender runs (they hold
    for the whole process, so for every contender alike); returns a line saying which."""
    split = ""
    if getattr(args, "cpu_devices", None) is not None:
        count = host.split_cpu(args.cpu_devices or None)
        import jax

        split = (f"; CPU split into {count} devices (jaxnn.host.split_cpu)" if count else
                 f"; {jax.device_count()} {jax.default_backend()} device(s) (not split)")
    if args.default_malloc:
        return "malloc: glibc's defaults (--default-malloc)" + split
    if host.retain_freed_memory():
        return "malloc: freed memory retained (jaxnn.host.retain_freed_memory)" + split
    return "malloc: unchanged (not glibc)" + split

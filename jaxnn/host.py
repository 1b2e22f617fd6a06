"""Host-process settings that make XLA's CPU runtime faster.

`split_cpu` shows JAX one CPU device per core, so that a sweep shards its trials over the
cores (XLA runs a vmapped program's small batched matmuls on one core at a time).

XLA's CPU runtime allocates a compiled program's temporary buffers afresh on every call. A
CNN train step's temporaries are tens of MB (64 MB for `experiments/benchmark.py`'s
workload B), and glibc's malloc serves blocks over 32 MB with new ``mmap`` pages, which the
kernel must fault in and zero on first touch, every step: B ran 1.6x slower for it.
`retain_freed_memory` makes malloc keep freed memory for reuse instead.

Python's cyclic garbage collector traverses every tracked object in each full collection,
and once more as the interpreter exits; after importing JAX, jaxnn, Optuna and matplotlib
that is ~200,000 objects that live as long as the process. `freeze_long_lived_objects`
takes the objects alive now out of its reach.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1


def retain_freed_memory() -> bool:
    """Makes glibc's malloc reuse freed memory rather than return it to the OS.

    Large blocks then come from the heap instead of fresh ``mmap`` pages, and freed memory
    is kept (not trimmed) for the next call of a compiled program; all threads share one
    arena, so that a block freed by one thread serves the next allocation on another. The
    process's resident memory then stays at its peak. The ``jaxnn`` command calls this at
    start; a script calls it once, before JAX's first computation (it affects the whole
    process, every library in it included; called after JAX has started its threads, the
    threads keep arenas of their own, and `experiments/benchmark_conv.py` measured some
    Winograd train programs 2-3x slower that way). The same settings from the environment,
    for any program:
    ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:glibc.malloc.arena_max=1``.

    Returns:
      True when applied; False where the C library is not glibc (macOS, Windows, musl),
      which is then left as it is.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_ARENA_MAX, 1)))


def freeze_long_lived_objects() -> int:
    """Moves every object alive now into the garbage collector's permanent generation
    (`gc.freeze`), which its collections skip.

    The ``jaxnn`` command calls this after its imports and again as it returns: the
    collections during a quick-start sweep then took 0.06-0.12 s instead of 0.17-0.33 s,
    and the interpreter's exit 0.06-0.10 s instead of 0.34-0.44 s (its last collection
    traversed every module's objects). Frozen objects are still freed by reference counting;
    only garbage *cycles* among them are never collected, so a process that keeps running
    should call this once its long-lived objects exist, not while it makes garbage.
    ``atexit`` functions and `weakref.finalize` callbacks run at exit as before.

    Returns:
      The number of objects frozen so far (`gc.get_freeze_count`).
    """
    gc.freeze()
    return gc.get_freeze_count()


_FORCED_COUNT = "xla_force_host_platform_device_count"
_split = 0  # the CPU device count `split_cpu` set in this process; 0: none


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def split_cpu(devices: int | None = None) -> int:
    """Makes JAX's CPU backend show ``devices`` devices, one per core by default.

    A sweep shards its trial axis over every device (`jaxnn.sweep`), and on one CPU device
    XLA runs the vmapped program's small batched matmuls one after another on about one
    core. Split over 2 cores, a 128-trial width-128 MLP step ran 2.2x faster per trial than
    solo, against 1.5x on one device (BENCHMARKS.md, "Per-trial step cost"). The ``jaxnn
    sweep`` command calls this at start (``--cpu-devices``); a script calls it right after
    ``import jax``, before any JAX operation. It changes nothing on a GPU or TPU, whose
    devices JAX uses first.

    Args:
      devices: the CPU device count; None: `cpu_cores`.

    Returns:
      The count set; 0 where it was left as it is: ``XLA_FLAGS`` already sets
      ``--xla_force_host_platform_device_count``, JAX's backends have already started, or
      this JAX has no ``jax_num_cpu_devices``.
    """
    global _split
    if _FORCED_COUNT in os.environ.get("XLA_FLAGS", ""):
        return 0
    count = devices or cpu_cores()
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backends have started; the count can no longer change
        return 0
    except AttributeError:  # a JAX without the option: XLA_FLAGS is the user's way
        return 0
    _split = count
    return count


def split_count() -> int:
    """The CPU device count `split_cpu` set in this process; 0 where it set none (the
    devices are then the user's own choice, e.g. ``XLA_FLAGS``)."""
    return _split


def memory_budget() -> int:
    """Half the first local device's memory (on CPU: of the host's RAM, at least 2 GiB): what
    a run or a sweep's chunk may plan to hold."""
    import jax

    device = jax.local_devices()[0]
    try:
        return int(device.memory_stats()["bytes_limit"] * 0.5)
    except (AttributeError, KeyError, TypeError, jax.errors.JaxRuntimeError):
        try:
            return max(2 * 2**30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
        except (ValueError, OSError, AttributeError):
            return 2 * 2**30

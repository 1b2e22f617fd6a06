"""XLA compiler options for programs whose compile time outweighs their run time."""

from __future__ import annotations

import jax

_OLDER_EMITTERS = "xla_cpu_use_fusion_emitters"
# On a GPU, XLA's default compile of a sweep program spends most of its time generating and
# timing Triton matmul kernels: with cuBLAS's matmuls a fresh process compiled the three
# programs of a 1024-trial sweep in 22 s instead of 81 s on an H200, and trained them as
# fast (BENCHMARKS.md, "GPU: 1024 trials on MNIST-sized data").
_GPU_FAST_COMPILE = {"xla_gpu_enable_triton_gemm": False}
# Options a jaxlib may not know: compiled without them there.
_OPTIONAL = (_OLDER_EMITTERS, *_GPU_FAST_COMPILE)


def compiler_options(run_once: bool = False, use_older_emitters: bool = False) -> dict | None:
    """XLA options for a sweep's training programs, or (``run_once``) a program that runs
    once, on this backend (None: the defaults).

    On CPU, backend optimisation level 1 compiles sweep training programs ~2x faster than
    the default with the same run time (measured by experiments/benchmark_sweep.py), and
    compilation dominates a CPU sweep. A program that runs once (a sweep's prologue,
    `jaxnn train`'s initial draw) takes level 0: it compiles in a fraction of the time
    for a few ms more running. It, and a program with
    ``use_older_emitters`` (`jaxnn.sweep.cost.older_emitters`: its modelled training is
    short), take XLA's older fusion emitters. On a GPU, every program's matmuls are
    cuBLAS's, not generated Triton kernels (`_GPU_FAST_COMPILE`).
    """
    backend = jax.default_backend()
    if backend == "gpu":
        return dict(_GPU_FAST_COMPILE)
    if backend != "cpu":
        return None
    options = {"xla_backend_optimization_level": 0 if run_once else 1}
    if run_once or use_older_emitters:
        options[_OLDER_EMITTERS] = False
    return options


def compile_lowered(lowered, options: dict | None):
    """``lowered.compile(options)``; a jaxlib that does not know one of the `_OPTIONAL`
    options compiles without it."""
    try:
        return lowered.compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as error:
        unknown = [name for name in options or () if name in _OPTIONAL and name in str(error)]
        if not unknown:
            raise
        return compile_lowered(lowered, {k: v for k, v in options.items()
                                         if k not in unknown})

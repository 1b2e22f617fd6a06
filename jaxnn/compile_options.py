"""XLA compiler options for programs whose compile time outweighs their run time."""

from __future__ import annotations

import jax

_OLDER_EMITTERS = "xla_cpu_use_fusion_emitters"


def compiler_options(run_once: bool = False, use_older_emitters: bool = False) -> dict | None:
    """XLA options for a sweep's training programs, or (``run_once``) a program that runs
    once, on this backend (None: the defaults).

    On CPU, backend optimisation level 1 compiles sweep training programs ~2x faster than
    the default with the same run time (measured by experiments/benchmark_sweep.py), and
    compilation dominates a CPU sweep. A program that runs once (a sweep's prologue,
    `jaxnn train`'s initial draw) takes level 0: it compiles in a fraction of the time
    for a few ms more running. It, and a program with
    ``use_older_emitters`` (`jaxnn.sweep.cost.older_emitters`: its modelled training is
    short), take XLA's older fusion emitters.
    """
    if jax.default_backend() != "cpu":
        return None
    options = {"xla_backend_optimization_level": 0 if run_once else 1}
    if run_once or use_older_emitters:
        options[_OLDER_EMITTERS] = False
    return options


def compile_lowered(lowered, options: dict | None):
    """``lowered.compile(options)``; a jaxlib without the emitter switch compiles without
    it."""
    try:
        return lowered.compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as error:
        if not options or _OLDER_EMITTERS not in options or _OLDER_EMITTERS not in str(error):
            raise
        return lowered.compile(compiler_options={k: v for k, v in options.items()
                                                 if k != _OLDER_EMITTERS})

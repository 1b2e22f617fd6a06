"""The sweep planner's cost model: seconds to compile a program, and a training step's FLOPs
and the rate they run at."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from jaxnn.config import Config
from jaxnn.sweep import channels

# Cost model of `pack_widths = "auto"` (seconds per compiled program and sustained
# training FLOP/s for these small matmuls), measured by experiments/benchmark_sweep.py.
COMPILE_SECONDS = {"cpu": 1.3, "gpu": 4.0, "tpu": 5.0}


FLOPS_PER_SECOND = {"cpu": 1e11, "gpu": 2e12, "tpu": 2e12}

# On a CPU split into devices by `jaxnn.host.split_cpu`, a sweep whose modelled training is
# shorter than this stays on one device: sharding its trials costs ~0.15-0.3 s more
# compiling (BENCHMARKS.md, "The CPU split into one device per core").
CPU_SHARDING_ABOVE_SECONDS = 0.5


def step_flops(cfg: Config, widths: Sequence[int], in_features: int, out: int) -> float:
    sizes = [in_features, *widths, out]
    macs = sum(a * b for a, b in itertools.pairwise(sizes))
    return 6.0 * cfg.training.batch_size * macs  # forward + backward


def program_step_flops(cfg: Config, input_shape: Sequence[int], out: int) -> float | None:
    """A training step's FLOPs for a program's (padded) config: the MLP shorthand's or a
    `channels.walkable` net's; None where the model has other layers."""
    if not cfg.model.layers:
        return step_flops(cfg, cfg.model.hidden, math.prod(input_shape), out)
    if channels.walkable(cfg):
        return channels.step_flops_of(cfg, (), tuple(input_shape), out)(())
    return None



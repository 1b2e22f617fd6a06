"""The sweep planner's cost model: seconds to compile a program, and a training step's FLOPs
and the rate they run at."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from jaxnn import models
from jaxnn.config import Config
from jaxnn.sweep import channels

# Seconds to lower and compile a sweep's training program on CPU with XLA's older emitters:
# a fixed part and one term per layer of each kind, nested layers included (the other
# layers' terms are within the noise). Fitted to the digits MLP with 1, 2 and 4 hidden
# layers, CNNs with 1 to 4 convolutions and the residual CNN of configs/resnet_digits.toml
# (BENCHMARKS.md, "The planner's compile-time model").
CPU_COMPILE_SECONDS = {"program": 1.1, "Dense": 0.25, "Conv": 0.75, "Norm": 0.2}
LAYER_KINDS = {"Dense": "Dense", "Conv1D": "Conv", "Conv2D": "Conv",
               "Conv2DTranspose": "Conv", "BatchNorm": "Norm", "LayerNorm": "Norm",
               "GroupNorm": "Norm"}
# XLA's CPU fusion emitters (MLIR) spend most of a sweep program's compile time compiling
# its ~100-150 fusions: lowering and compiling took 1.35-1.6x longer on them than on the
# older emitters, which trained the programs 5-7% slower (BENCHMARKS.md, "Compiling sweep
# programs"). So a program whose modelled training time is under `OLDER_EMITTERS_BELOW`
# times its modelled compile time takes the older ones.
FUSION_EMITTERS_FACTOR = 1.5
OLDER_EMITTERS_BELOW = 4.0
# A backend's compile times against the CPU's: the quick-start MLP's program (three Dense
# layers, ~1.9 s on CPU) takes ~4 s on a GPU and ~5 s on a TPU.
COMPILE_SCALE = {"cpu": 1.0, "gpu": 2.2, "tpu": 2.7}

# Sustained training FLOP/s of the vmapped small matmuls, for `pack_widths = "auto"`,
# measured by experiments/benchmark_sweep.py (GPU: 1024 trials of the MLP at widths
# 16-128 on MNIST-sized data trained ~35 TFLOP in ~3 s on an H200).
FLOPS_PER_SECOND = {"cpu": 1e11, "gpu": 1e13, "tpu": 2e12}

# On a CPU split into devices by `jaxnn.host.split_cpu`, a sweep whose modelled training is
# shorter than this stays on one device: sharding its trials costs ~0.15-0.3 s more
# compiling (BENCHMARKS.md, "The CPU split into one device per core").
CPU_SHARDING_ABOVE_SECONDS = 0.5


def flops_per_second(backend: str) -> float:
    """`FLOPS_PER_SECOND` on ``backend`` (another accelerator: a GPU's)."""
    return FLOPS_PER_SECOND.get(backend, FLOPS_PER_SECOND["gpu"])


def training_seconds(trials: int, steps: int, flops: float | None,
                     backend: str) -> float | None:
    """Modelled seconds to train ``trials`` trials for ``steps`` steps of ``flops`` FLOPs
    each on ``backend`` (None where the FLOPs are unknown)."""
    return None if flops is None else trials * steps * flops / flops_per_second(backend)


def step_flops(cfg: Config, widths: Sequence[int], in_features: int, out: int) -> float:
    """A training step's FLOPs (forward and backward, the batch's) of the MLP with these
    hidden ``widths``."""
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


def cpu_compile_seconds(cfg: Config) -> float:
    """Modelled seconds to lower and compile ``cfg``'s training program on CPU, older
    emitters."""
    if cfg.model.layers:
        kinds = [LAYER_KINDS.get(spec.get("type")) for spec in models.layer_specs(
            cfg.model.layers)]
    else:  # The MLP shorthand: its hidden layers and the output layer.
        kinds = ["Dense"] * (len(cfg.model.hidden) + 1)
    return CPU_COMPILE_SECONDS["program"] + sum(CPU_COMPILE_SECONDS[kind] for kind in kinds
                                                if kind)


def older_emitters(cfg: Config, training_seconds: float | None) -> bool:
    """Whether ``cfg``'s program, training for the modelled ``training_seconds`` (None:
    unknown, assumed long), compiles with XLA's older CPU emitters."""
    return (training_seconds is not None
            and training_seconds < OLDER_EMITTERS_BELOW * cpu_compile_seconds(cfg))


def compile_seconds(cfg: Config, backend: str, training_seconds: float | None = None) -> float:
    """Modelled seconds to lower and compile ``cfg``'s training program on ``backend``, to
    train for ``training_seconds`` (which picks the CPU's emitters; None: unknown, assumed
    long)."""
    seconds = COMPILE_SCALE.get(backend, COMPILE_SCALE["gpu"]) * cpu_compile_seconds(cfg)
    if backend == "cpu" and not older_emitters(cfg, training_seconds):
        seconds *= FUSION_EMITTERS_FACTOR
    return seconds

"""The planner's cost model: compile seconds by network, emitters, chunk reuse."""

import os

import jax
import pytest

from jaxnn import config, models, run, sweep
from jaxnn.sweep import cost, packing

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SECONDS = cost.CPU_COMPILE_SECONDS


def cnn_channel_sweep(epochs: int):
    """The CNN channel sweep of `experiments/benchmark_sweep.py --channels`: cnn_digits
    without Dropout, its first convolution's channels {8, 16, 32} x 4 learning rates."""
    cfg = config.load(f"{CONFIGS}/cnn_digits.toml", [
        f"training.epochs={epochs}", "optimizer.name='momentum'", "schedule.name='constant'",
        "output.plots=false"])
    layers = tuple(spec for spec in cfg.model.layers if spec["type"] != "Dropout")
    return cfg.replace(model={"layers": layers}, sweep={"grid": {
        "learning_rate": [3e-4, 1e-3, 3e-3, 1e-2], "model.layers[0].features": [8, 16, 32]}})


def test_every_weighted_layer_counts_nested_ones_included():
    resnet = config.load(f"{CONFIGS}/resnet_digits.toml")
    types = [spec["type"] for spec in models.layer_specs(resnet.model.layers)]
    assert (types.count("Conv2D"), types.count("BatchNorm"), types.count("Dense")) == (6, 6, 1)
    assert cost.cpu_compile_seconds(resnet) == pytest.approx(
        SECONDS["program"] + 6 * SECONDS["Conv"] + 6 * SECONDS["Norm"] + SECONDS["Dense"])
    mlp = config.load(f"{CONFIGS}/sweep_lr_width.toml")  # hidden = [64, 64]
    assert cost.cpu_compile_seconds(mlp) == pytest.approx(
        SECONDS["program"] + 3 * SECONDS["Dense"])
    cnn = config.load(f"{CONFIGS}/cnn_digits.toml")
    assert cost.cpu_compile_seconds(cnn) > cost.cpu_compile_seconds(mlp)


def test_the_emitters_follow_each_programs_own_compile_time():
    mlp = config.load(f"{CONFIGS}/sweep_lr_width.toml")
    cnn = config.load(f"{CONFIGS}/cnn_digits.toml")
    # Training long for the MLP's program but short for the CNN's, which compiles longer.
    seconds = cost.OLDER_EMITTERS_BELOW * (cost.cpu_compile_seconds(mlp)
                                           + cost.cpu_compile_seconds(cnn)) / 2
    assert not cost.older_emitters(mlp, seconds) and cost.older_emitters(cnn, seconds)
    assert not cost.older_emitters(cnn, None)  # unknown: assumed long
    base = cost.cpu_compile_seconds(cnn)
    assert cost.compile_seconds(cnn, "cpu", seconds) == pytest.approx(base)
    assert cost.compile_seconds(cnn, "cpu", None) == pytest.approx(
        base * cost.FUSION_EMITTERS_FACTOR)
    assert cost.compile_seconds(cnn, "gpu", None) == pytest.approx(
        base * cost.COMPILE_SCALE["gpu"])


def test_a_chunk_reuses_a_compiled_size_by_the_networks_own_flops():
    cfg = cnn_channel_sweep(5)
    dataset = run.prepare(cfg)
    shape, out = dataset.input_shape, dataset.output_size
    flops = cost.program_step_flops(cfg, shape, out)
    steps, compiled, needed = 20, [64], 8
    per_epoch = steps * flops / cost.flops_per_second("cpu")
    # Padding 56 trials for an epoch costs less than a compile; for many epochs more.
    assert 56 * per_epoch < cost.compile_seconds(cfg, "cpu", needed * per_epoch)
    assert packing.reuse_size(compiled, needed, 1, cfg, shape, out, steps, "cpu") == 64
    epochs = 1 + int(cost.compile_seconds(cfg, "cpu") / (56 * per_epoch))
    assert packing.reuse_size(compiled, needed, epochs, cfg, shape, out, steps, "cpu") == 8
    # A network whose FLOPs the model does not know reuses what is compiled.
    resnet = config.load(f"{CONFIGS}/resnet_digits.toml")
    assert cost.program_step_flops(resnet, shape, out) is None
    assert packing.reuse_size(compiled, needed, 10**6, resnet, shape, out, steps, "cpu") == 64


def test_the_short_cnn_channel_sweep_is_one_program_on_cpu(monkeypatch):
    # Measured (BENCHMARKS.md, "CNN channel packing"): at 5 epochs one program for the three
    # counts trained the sweep 1.3-2.4x faster than one program per count.
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    cfg = cnn_channel_sweep(5)
    plan = sweep.make_plan(cfg, run.prepare(cfg))
    assert len(plan.groups) == 1 and plan.groups[0].packed_layers == (0,)

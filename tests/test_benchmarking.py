"""The timing helpers behind `experiments/`: interleaved rounds and paired ratios."""

import argparse

import experiment_modules
import jax
import jax.numpy as jnp
import pytest

from jaxnn import benchmarking
from jaxnn.benchmarking import Timing


def test_compare_times_every_contender_in_every_round():
    a = jnp.ones((8, 8), jnp.float32)
    contenders = {"matmul": (jax.jit(lambda a: a @ a), (a,)),
                  "add": (jax.jit(lambda a: a + 1), (a,))}
    timings = benchmarking.compare(contenders, rounds=3, calls_per_round=2)
    assert set(timings) == {"matmul", "add"}
    for timing in timings.values():
        assert len(timing.rounds_us) == 3
        assert timing.min_us <= timing.median_us <= timing.max_us
        assert sorted(timing.rounds_us)[1] == timing.median_us
        assert timing.first_call_s > 0


def test_paired_ratio_pairs_rounds_not_medians():
    # A slow second round hits both: the per-round ratios are 0.5, 0.5 and 2, while the
    # ratio of the medians is 1.
    ours = Timing(20.0, 10.0, 200.0, 0.1, (10.0, 200.0, 20.0))
    theirs = Timing(20.0, 10.0, 400.0, 0.1, (20.0, 400.0, 10.0))
    timings = {"ours": ours, "theirs": theirs}
    assert benchmarking.paired_ratio(timings, "ours", "theirs") == (0.5, 2, 3)
    assert benchmarking.paired_ratio(timings, "theirs", "ours") == (2.0, 1, 3)
    table = benchmarking.paired_table(timings, "ours")
    assert "theirs" in table and "0.500" in table and "2 of 3" in table


def test_paired_ratio_needs_the_rounds_of_one_compare():
    timings = {"ours": Timing(1.0, 1.0, 1.0, 0.1, (1.0, 1.0)),
               "theirs": Timing(1.0, 1.0, 1.0, 0.1, (1.0,))}
    with pytest.raises(ValueError, match="'ours' and 'theirs'"):
        benchmarking.paired_ratio(timings, "ours", "theirs")


def test_timing_flags_default_per_script():
    parser = argparse.ArgumentParser()
    benchmarking.add_timing_flags(parser, rounds=21)
    args = parser.parse_args([])
    assert (args.rounds, args.calls) == (21, 10)
    assert parser.parse_args(["--rounds", "3", "--calls", "2"]).rounds == 3


def test_scaling_grids_hold_exactly_n_trials(monkeypatch):
    import math

    module = experiment_modules.load("benchmark_sweep", monkeypatch)
    lrs, widths = [0.001 * 2**i for i in range(8)], [16, 32, 64, 128]
    for count in (1, 8, 32, 128, 512):
        grid = module.scaling_grid(count, lrs, widths)
        assert math.prod(len(v) for v in grid.values()) == count
        assert set(grid["width"]) <= set(widths) and set(grid["learning_rate"]) <= set(lrs)
    assert len(set(module.scaling_grid(8, lrs, widths)["learning_rate"])) == 2
    with pytest.raises(SystemExit, match="--scaling 48"):
        module.scaling_grid(48, lrs, widths)


def test_per_call_divides_every_round_but_the_first_call():
    timing = benchmarking.per_call(Timing(40.0, 20.0, 80.0, 1.5, (20.0, 40.0, 80.0)), 4)
    assert timing == Timing(10.0, 5.0, 20.0, 1.5, (5.0, 10.0, 20.0))


def test_in_scan_equals_the_step_called_in_a_loop(monkeypatch):
    # benchmark.py --scan: K steps in one lax.scan end where K jitted calls end, for a step
    # with a non-array leaf beside its params (as an Equinox model has).
    module = experiment_modules.load("benchmark", monkeypatch)

    def step(model, velocity, x):  # Not jitted: jax.jit takes no function argument.
        w, act = model
        loss, grad = jax.value_and_grad(lambda w: jnp.sum(act(x @ w) ** 2))(w)
        velocity = 0.9 * velocity + grad
        return (w - 0.1 * velocity, act), velocity, loss

    model = (jnp.eye(3) * 0.5, jnp.tanh)
    args = (model, jnp.zeros((3, 3)), jnp.arange(6.0).reshape(2, 3) / 6)
    run, run_args = module.in_scan(step, args, 3)
    (w, velocity), loss = run(*run_args)
    carried = args[:2]
    for _ in range(3):
        *carried, expected_loss = step(*carried, args[2])
    eps = float(jnp.finfo(jnp.float32).eps)
    assert jnp.allclose(w, carried[0][0], rtol=16 * eps, atol=16 * eps)
    assert jnp.allclose(velocity, carried[1], rtol=16 * eps, atol=16 * eps)
    assert jnp.allclose(loss, expected_loss, rtol=16 * eps)

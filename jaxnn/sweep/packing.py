"""Width packing: trials that differ only in hidden width share one program, padded to its
widest; the split of widths into programs by the cost model (`cost`); each trial's initial
params cut from one draw at the widest widths."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import config as config_lib
from jaxnn import initializers, models
from jaxnn.config import Config
from jaxnn.sweep import channels
from jaxnn.sweep.cost import compile_seconds, program_step_flops, training_seconds
from jaxnn.sweep.spec import Trial


def reuse_size(compiled: Sequence[int], needed: int, epochs: int, cfg: Config,
               input_shape: Sequence[int], out: int, steps_per_epoch: int,
               backend: str) -> int:
    """The chunk size to train ``needed`` trials for ``epochs`` epochs: the smallest size a
    program is already compiled for when padding to it costs less than compiling another
    (`cost.compile_seconds` against the padded trials' FLOPs; a network whose FLOPs the model
    does not know always reuses), else ``needed``."""
    bigger = [size for size in compiled if size >= needed]
    if not bigger:
        return needed
    flops = program_step_flops(cfg, input_shape, out)
    if flops is None:
        return min(bigger)
    trial_seconds = training_seconds(1, epochs * steps_per_epoch, flops, backend)
    padding = (min(bigger) - needed) * trial_seconds
    compiling = compile_seconds(cfg, backend, needed * trial_seconds)
    return min(bigger) if padding <= compiling else needed


def width_runs(group_trials, widths_of, flops_of, steps, backend, setting,
               config: Config) -> list[list[Trial]]:
    """Splits trials that differ only in their widths into programs: runs of neighbouring
    widths, each run padded to its widest.

    Args:
      group_trials: the trials.
      widths_of: ``widths_of(trial)``, the trial's widths (a tuple: hidden layers' units,
        or packed layers' channels).
      flops_of: ``flops_of(widths)``, a training step's FLOPs at those widths.
      steps: the training steps of a trial.
      backend: the JAX backend, for the cost model.
      setting: True packs all widths into one program and False gives each width its own;
        "auto" picks the split with the least modelled time (`cost.compile_seconds` per
        program plus the padded FLOPs at `FLOPS_PER_SECOND`) by dynamic programming over
        the sorted widths.
      config: one trial's config, for the modelled compile time of its programs.
    """
    by_width: dict[tuple[int, ...], list[Trial]] = {}
    for trial in sorted(group_trials, key=widths_of):
        by_width.setdefault(widths_of(trial), []).append(trial)
    widths = list(by_width)
    if setting is True or setting is False:
        return ([[t for w in widths for t in by_width[w]]] if setting
                else [by_width[w] for w in widths])

    def run_cost(first, last):  # widths[first:last] in one program
        padded = tuple(max(column) for column in zip(*widths[first:last], strict=True))
        trials_in_run = sum(len(by_width[w]) for w in widths[first:last])
        training = training_seconds(trials_in_run, steps, flops_of(padded), backend)
        return compile_seconds(config, backend, training) + training

    best = [(0.0, 0)] + [(math.inf, 0)] * len(widths)  # best[i]: (cost, start of last run)
    for last in range(1, len(widths) + 1):
        best[last] = min((best[first][0] + run_cost(first, last), first)
                         for first in range(last))
    runs, last = [], len(widths)
    while last:
        first = best[last][1]
        runs.append([t for w in widths[first:last] for t in by_width[w]])
        last = first
    return runs[::-1]


def hidden_structure(model: config_lib.ModelConfig) -> config_lib.ModelConfig:
    """The MLP's structure with its widths and numeric values blanked (dropout only says
    whether Dropout layers exist): trials that share it draw the same params up to width
    and init scale, so one draw at the widest widths serves them all."""
    return dataclasses.replace(model, hidden=(0,) * len(model.hidden), init_scale=1.0,
                               dropout=0.5 if model.dropout > 0 else 0.0)


def fit_inputs(lone_shapes: Any, widest_shapes: Any, dtype) -> tuple[Any, Any]:
    """What `fit_widest` needs to know of one trial, as arrays (so that one compiled program
    serves every mix of widths): each leaf's own shape and, for weights, the ratio of its own
    initializer's standard deviation to the widest one's."""
    w_init = initializers.get(models.MLP_W_INIT)

    def ratio(path, lone, widest):
        if path[-1] != jax.tree_util.DictKey("w"):
            return np.ones((), dtype)
        return np.asarray(w_init.stddev(lone.shape) / w_init.stddev(widest.shape), dtype)

    dims = jax.tree.map(lambda s: np.asarray(s.shape, np.int32), lone_shapes)
    return dims, jax.tree_util.tree_map_with_path(ratio, lone_shapes, widest_shapes)


def fit_widest(widest_params, init_scale, lone_dims, ratios, target_shapes):
    """A trial's own initial params from the widest draw: its own block (``lone_dims``, from
    `fit_inputs`) rescaled to its own initializer's spread and init scale, zero beyond it,
    in the program's shapes (``target_shapes``)."""

    def fit(path, leaf, dims, ratio, target):
        block = leaf[tuple(slice(0, n) for n in target.shape)]
        inside = functools.reduce(jnp.logical_and, [
            jax.lax.broadcasted_iota(jnp.int32, target.shape, axis) < dims[axis]
            for axis in range(len(target.shape))], jnp.ones(target.shape, bool))
        if path[-1] == jax.tree_util.DictKey("w"):
            block = block * ratio.astype(block.dtype) * init_scale.astype(block.dtype)
        return jnp.where(inside, block, jnp.zeros((), block.dtype))

    return jax.tree_util.tree_map_with_path(fit, widest_params, lone_dims, ratios,
                                            target_shapes)


@functools.lru_cache(maxsize=256)
def model_param_shapes(model: config_lib.ModelConfig, input_shape: tuple, output_size: int):
    """The parameter shapes of a model's network (no allocation)."""
    net = models.build(model, output_size)
    return jax.eval_shape(lambda k: net.init(k, (None, *input_shape))[1],
                          jax.ShapeDtypeStruct((2,), jnp.uint32))


def own_param_shapes(trial: Trial, dataset) -> Any:
    """The parameter shapes of a trial's network at its own width (no allocation)."""
    args = (trial.config.model, tuple(dataset.input_shape), dataset.output_size)
    try:
        hash(args)
    except TypeError:  # ``model.layers`` holds tables
        return model_param_shapes.__wrapped__(*args)
    return model_param_shapes(*args)


def trial_params_unpadded(params: Any, trial: Trial, dataset) -> Any:
    """A packed trial's final parameters cropped to its own widths or channels."""
    if channels.walkable(trial.config):
        return channels.crop_params(params, trial.config.model, dataset.input_shape,
                                    dataset.output_size)
    return jax.tree.map(lambda p, s: p[tuple(slice(0, n) for n in s.shape)], params,
                        own_param_shapes(trial, dataset))


def masked_network(config: Config, output_size: int, packed_width: int):
    """``network(hparams)`` for a program that packs MLP trials of different hidden widths:
    the config's hidden layers have ``packed_width`` units (the group's widest) and
    ``hparams["width"]`` (one int per trial, vmapped) masks the units beyond each trial's own
    width, so they never touch the outputs or the real units' gradients. Initial params come
    from `fit_widest`, zero-padded."""
    dtype = jnp.dtype(config.training.precision)

    def network(hparams):
        width = hparams["width"]
        mask = (jnp.arange(packed_width, dtype=width.dtype) < width).astype(dtype)
        return models.build(config.model, output_size, dropout=hparams["dropout"],
                            hidden_mask=mask, source=config.source)

    return network

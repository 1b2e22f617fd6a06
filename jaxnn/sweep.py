"""Hyperparameter sweeps as few compiled programs as possible.

A ``[sweep]`` section lists the values to try::

    [sweep]
    grid = {learning_rate = [0.01, 0.1, 1.0], width = [32, 128]}
    random = {momentum = {distribution = "uniform", low = 0.5, high = 0.99}}
    count = 4        # random draws per grid point
    seed = 0         # seeds the random draws
    pack_widths = "auto"

Names are the numeric hyperparameters (`NUMERIC`: learning rate, momentum, weight decay,
dropout, init scale, seed), the structural ones (`STRUCTURAL`: width, depth, activation,
batch size, optimizer, schedule) or any config key as "section.key".

Planning groups the trials by compiled structure: everything but the numeric
hyperparameters. Inside a group the numeric ones are array leaves, vmapped in one program,
and the trial axis is sharded over every device. With ``pack_widths``, trials that differ
only in hidden width share a program: hidden layers are padded to the program's widest and
the extra units masked (`jaxnn.train.make_train`); "auto" splits the widths into programs
by a cost model. Every trial starts from the parameters it would draw alone (zero-padded
when packed); as the initializers are shape-stable, those come from one draw at the sweep's
widest widths, cropped and rescaled. That draw and the epochs' minibatch orders are made by a
small program run once per chunk, so the training programs compile no random-number code
(dropout's keys aside).
Trials run in chunks that fit device memory; each chunk's results are appended to
``results.jsonl`` (flushed and fsynced), so a killed sweep resumed with ``resume=True``
reruns only unfinished chunks and ends with the same table.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import itertools
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnn import config as config_lib
from jaxnn import hyperparameters, initializers, jsonl, models, rundir
from jaxnn._table import format_table
from jaxnn.config import Config, ConfigError
from jaxnn.summary import param_count
from jaxnn.train import HPARAMS, Trainer, default_hparams, make_train, raw_key

# Names a sweep may vary, from the one table (`jaxnn.hyperparameters`): those that keep the
# compiled program (traced leaves and the seed) and those that change it.
NUMERIC = {h.name: h.key for h in hyperparameters.TABLE if h.kind != hyperparameters.STRUCTURAL}
STRUCTURAL = {h.name: h.key for h in hyperparameters.TABLE
              if h.kind == hyperparameters.STRUCTURAL}
SPEC_KEYS = ("grid", "random", "count", "seed", "pack_widths", "trials_per_chunk", "metric")
RESULTS = "results.jsonl"
SWEEP_CONFIG = "sweep.toml"

# Cost model of `pack_widths = "auto"` (seconds per compiled program and sustained
# training FLOP/s for these small matmuls), measured by experiments/benchmark_sweep.py.
COMPILE_SECONDS = {"cpu": 1.3, "gpu": 4.0, "tpu": 5.0}
FLOPS_PER_SECOND = {"cpu": 1e11, "gpu": 2e12, "tpu": 2e12}


class Trial(NamedTuple):
    """One configuration of a sweep: its index, the swept values and the full config."""

    index: int
    values: dict
    config: Config


class Group(NamedTuple):
    """Trials that share one compiled program.

    Attributes:
      trials: the trials, in sweep order.
      config: the program's config (hidden widths padded to ``packed_width`` when packed).
      packed_width: the padded hidden width when widths are packed, else None.
      chunks: the trial indices run together, one chunk per call of the program.
    """

    trials: tuple[Trial, ...]
    config: Config
    packed_width: int | None
    chunks: tuple[tuple[int, ...], ...]


class Plan(NamedTuple):
    """What a sweep will run: its trials, groups, and an estimate of the memory per trial."""

    trials: tuple[Trial, ...]
    groups: tuple[Group, ...]
    metric: str
    bytes_per_trial: int
    devices: int

    def describe(self) -> str:
        """A printable account of the plan (`jaxnn sweep --plan`)."""
        lines = [f"{len(self.trials)} trials in {len(self.groups)} compiled programs "
                 f"({self.devices} device(s)); ranking by {self.metric}"]
        for number, group in enumerate(self.groups):
            cfg = group.config
            widths = sorted({t.config.model.hidden for t in group.trials})
            structure = (f"hidden={list(cfg.model.hidden)}" if not cfg.model.layers
                         else f"{len(cfg.model.layers)} layers")
            packed = f", widths {[list(w) for w in widths]} packed to {group.packed_width}" \
                if group.packed_width else ""
            lines.append(
                f"  program {number}: {len(group.trials)} trials in {len(group.chunks)} "
                f"chunk(s) of <= {max(len(c) for c in group.chunks)}; {structure}, "
                f"{cfg.model.activation if not cfg.model.layers else ''} "
                f"{cfg.optimizer.name}/{cfg.schedule.name}, batch {cfg.training.batch_size}"
                f"{packed}")
        per_chunk = max(len(c) for g in self.groups for c in g.chunks)
        lines.append(f"memory: ~{self.bytes_per_trial / 2**20:.1f} MiB per trial, "
                     f"~{per_chunk * self.bytes_per_trial / 2**20:.1f} MiB per chunk")
        return "\n".join(lines)


# --- the spec -----------------------------------------------------------------------------

def _spec(config: Config) -> dict:
    spec = dict(config.sweep)
    source = config.source
    if not spec:
        raise ConfigError(source, "sweep", "no [sweep] section: nothing to sweep")
    for key in spec:
        if key not in SPEC_KEYS:
            raise ConfigError(source, f"sweep.{key}",
                              f"unknown key; [sweep] takes {', '.join(SPEC_KEYS)}")
    for table in ("grid", "random"):
        if not isinstance(spec.get(table, {}), dict):
            raise ConfigError(source, f"sweep.{table}", "expected a table of name = values")
        for name in spec.get(table, {}):
            if name not in NUMERIC and name not in STRUCTURAL and name.count(".") != 1:
                raise ConfigError(source, f"sweep.{table}.{name}", "unknown hyperparameter; "
                                  f"use one of {', '.join([*NUMERIC, *STRUCTURAL])} or a "
                                  "config key as \"section.key\"")
    for name, values in spec.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(source, f"sweep.grid.{name}", "expected a non-empty list")
    if not spec.get("grid") and not spec.get("random"):
        raise ConfigError(source, "sweep", "needs a grid or a random table")
    for key in ("count", "seed", "trials_per_chunk"):
        value = spec.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(source, f"sweep.{key}", f"expected an int >= 0, got {value!r}")
    if spec.get("random") and spec.get("count", 0) < 1:
        raise ConfigError(source, "sweep.count", "random search needs count >= 1")
    if spec.get("pack_widths", "auto") not in ("auto", True, False):
        raise ConfigError(source, "sweep.pack_widths", 'expected "auto", true or false')
    if spec.get("metric", "auto") not in ("auto", "val_accuracy", "val_loss"):
        raise ConfigError(source, "sweep.metric", 'expected "val_accuracy" or "val_loss"')
    return spec


def _draw(name: str, dist: Any, rng: np.random.Generator, source: str) -> Any:
    key = f"sweep.random.{name}"
    if isinstance(dist, list):
        dist = {"distribution": "choice", "values": dist}
    if not isinstance(dist, dict):
        raise ConfigError(source, key, 'expected {distribution = "log_uniform", low = ..., '
                          "high = ...} or a list of choices")
    kind = dist.get("distribution")
    if kind == "choice":
        values = dist.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(source, key, "choice needs a non-empty values list")
        return values[int(rng.integers(len(values)))]
    low, high = dist.get("low"), dist.get("high")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) \
            or not low < high:
        raise ConfigError(source, key, f"needs numbers low < high, got {low!r}, {high!r}")
    if kind == "uniform":
        value = float(rng.uniform(low, high))
    elif kind == "log_uniform":
        if low <= 0:
            raise ConfigError(source, key, "log_uniform needs low > 0")
        value = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    else:
        raise ConfigError(source, key, f"distribution {kind!r} is not uniform, log_uniform "
                          "or choice")
    known = hyperparameters.BY_NAME.get(name)
    return round(value) if known is not None and known.integer else value


def _apply(base: Config, values: dict, where: str) -> Config:
    raw = config_lib.to_dict(base)
    raw["sweep"] = {}
    model = raw["model"]
    if "width" in values or "depth" in values:
        if model["layers"]:
            raise ConfigError(base.source, where, "width and depth sweeps need the MLP "
                              "shorthand (model.hidden), not model.layers")
        hidden = list(model["hidden"]) or [64]
        width = values.get("width", hidden[0])
        model["hidden"] = [width] * values.get("depth", len(hidden))
    for name, value in values.items():
        if name in ("width", "depth"):
            continue
        section, key = (NUMERIC.get(name) or STRUCTURAL.get(name) or name).split(".")
        if section not in raw or section == "sweep":
            raise ConfigError(base.source, where, f"unknown section {section!r}")
        raw[section][key] = value
    try:
        return config_lib.from_dict(raw, base.source)
    except ConfigError as error:
        raise ConfigError(base.source, where, f"trial {values}: {error.key}: "
                          f"{str(error).split(': ', 2)[-1]}") from None


def trials(config: Config) -> tuple[Trial, ...]:
    """Every trial of the config's sweep, in a fixed order (grid product x random draws)."""
    spec = _spec(config)
    grid = spec.get("grid", {})
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    rng = np.random.default_rng(spec.get("seed", 0))
    random = spec.get("random", {})
    result = []
    for point in points:
        for _ in range(spec.get("count", 1) if random else 1):
            values = {**point, **{name: _draw(name, dist, rng, config.source)
                                  for name, dist in random.items()}}
            result.append(Trial(len(result), values,
                                _apply(config, values, "sweep")))
    return tuple(result)


# --- planning -----------------------------------------------------------------------------

def _structure(cfg: Config, pack: bool) -> str:
    """The part of a config that shapes the compiled program (numeric values neutralised)."""
    raw = config_lib.to_dict(cfg)
    for section_key in NUMERIC.values():
        section, key = section_key.split(".")
        raw[section][key] = None
    raw["model"]["dropout"] = cfg.model.dropout > 0  # Dropout layers exist or not.
    if pack:
        raw["model"]["hidden"] = len(cfg.model.hidden)  # depth only
    return json.dumps(raw, sort_keys=True, default=str)


def _packable(cfg: Config) -> bool:
    return not cfg.model.layers and cfg.model.dropout == 0 and len(cfg.model.hidden) > 0


def _step_flops(cfg: Config, widths: Sequence[int], in_features: int, out: int) -> float:
    sizes = [in_features, *widths, out]
    macs = sum(a * b for a, b in itertools.pairwise(sizes))
    return 6.0 * cfg.training.batch_size * macs  # forward + backward


def _width_runs(group_trials, in_features, out, steps, backend, setting) -> list[list[Trial]]:
    """Splits trials that differ only in hidden width into programs: runs of neighbouring
    widths, each run padded to its widest.

    ``setting`` True packs all widths into one program and False gives each width its own;
    "auto" picks the split with the least modelled time (`COMPILE_SECONDS` per program plus
    the padded FLOPs at `FLOPS_PER_SECOND`) by dynamic programming over the sorted widths.
    """
    by_width: dict[tuple[int, ...], list[Trial]] = {}
    for trial in sorted(group_trials, key=lambda t: t.config.model.hidden):
        by_width.setdefault(trial.config.model.hidden, []).append(trial)
    widths = list(by_width)
    if setting is True or setting is False:
        return ([[t for w in widths for t in by_width[w]]] if setting
                else [by_width[w] for w in widths])
    compile_s, rate = COMPILE_SECONDS.get(backend, 1.0), FLOPS_PER_SECOND.get(backend, 3e10)
    cfg = group_trials[0].config

    def run_cost(first, last):  # widths[first:last] in one program
        widest = max(max(w) for w in widths[first:last])
        trials_in_run = sum(len(by_width[w]) for w in widths[first:last])
        padded = [widest] * len(cfg.model.hidden) if last - first > 1 else widths[first]
        return compile_s + trials_in_run * steps * _step_flops(cfg, padded, in_features,
                                                               out) / rate

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


def _bytes_per_trial(cfg: Config, dataset, own_seed: bool) -> int:
    """Device memory one trial of the program ``cfg`` needs, roughly; ``own_seed``: the
    trial has its own minibatch order (the seed is swept), not one shared by its chunk."""
    net = models.build(cfg.model, dataset.output_size)
    from jaxnn.summary import rows

    table = [row for row in rows(net, (None, *dataset.input_shape)) if row.leaf]
    itemsize = np.dtype(cfg.training.precision).itemsize
    params = sum(r.params for r in table)
    activations = cfg.training.batch_size * sum(r.values_per_example for r in table)
    # 5 x params: params, grads, updates and two optimizer moments; per-epoch metrics.
    own = itemsize * (5 * params + 3 * activations) + 8 * 8 * cfg.training.epochs
    return own + (_order_bytes(cfg, dataset) if own_seed else 0)


def _order_bytes(cfg: Config, dataset) -> int:
    """The minibatch order of every epoch (int32 indices): a trial's own when it sweeps the
    seed, otherwise one shared by its chunk."""
    batches = len(dataset.x_train) // cfg.training.batch_size * cfg.training.batch_size
    return 4 * cfg.training.epochs * batches


def _memory_budget() -> int:
    """Half the first device's memory (on CPU: of the host's RAM, at least 2 GiB)."""
    device = jax.devices()[0]
    try:
        return int(device.memory_stats()["bytes_limit"] * 0.5)
    except (AttributeError, KeyError, TypeError):
        try:
            return max(2 * 2**30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
        except (ValueError, OSError, AttributeError):
            return 2 * 2**30


def _check_trials(config: Config, all_trials, dataset) -> None:
    """Every trial's config against the data (batch size, layer shapes, loss), each distinct
    structure once, so that no error waits until other trials have trained."""
    from jaxnn import run

    seen = set()
    for trial in all_trials:
        key = _structure(trial.config, pack=False)
        if key in seen:
            continue
        seen.add(key)
        try:
            run.check_against_data(trial.config, dataset)
        except ConfigError as error:
            raise ConfigError(config.source, "sweep", f"trial {trial.values}: {error.key}: "
                              f"{str(error).split(': ', 2)[-1]}") from None


def make_plan(config: Config, dataset) -> Plan:
    """Groups the sweep's trials into compiled programs and chunks.

    Args:
      config: the sweep config.
      dataset: the prepared data (`jaxnn.run.prepare`), for shapes.
    """
    spec = _spec(config)
    all_trials = trials(config)
    _check_trials(config, all_trials, dataset)
    backend = jax.default_backend()
    devices = jax.device_count()
    steps = config.training.epochs * max(1, len(dataset.x_train) // config.training.batch_size)
    in_features = math.prod(dataset.input_shape)
    pack_setting = spec.get("pack_widths", "auto")
    by_structure: dict[str, list[Trial]] = {}
    for trial in all_trials:
        packable = pack_setting is not False and _packable(trial.config)
        by_structure.setdefault(_structure(trial.config, packable), []).append(trial)
    groups, sizes = [], []
    for members in by_structure.values():
        if _packable(members[0].config) and pack_setting is not False:
            parts = _width_runs(members, in_features, dataset.output_size, steps, backend,
                                pack_setting)
        else:  # The structure key kept the widths apart: one width per group already.
            parts = [members]
        for part in parts:
            part_widths = {t.config.model.hidden for t in part}
            packed_width = (max(max(w) for w in part_widths) if len(part_widths) > 1
                            else None)
            cfg = part[0].config
            if packed_width:
                cfg = cfg.replace(model={"hidden": (packed_width,) * len(cfg.model.hidden)})
            own_seed = len({t.config.training.seed for t in part}) > 1
            per_trial = _bytes_per_trial(cfg, dataset, own_seed)
            shared = 0 if own_seed else _order_bytes(cfg, dataset)
            if per_trial + shared > _memory_budget():
                raise ConfigError(config.source, "sweep", (
                    f"one trial of {part[0].values} needs ~{(per_trial + shared) / 2**30:.1f} "
                    f"GiB (of which the minibatch order of {cfg.training.epochs} epochs "
                    f"~{_order_bytes(cfg, dataset) / 2**30:.1f} GiB), more than the "
                    f"~{_memory_budget() / 2**30:.1f} GiB budget (half the device's memory)"))
            sizes.append(per_trial)
            cap = spec.get("trials_per_chunk") or max(
                1, (_memory_budget() - shared) // per_trial)
            cap = max(devices, cap // devices * devices)
            count = math.ceil(len(part) / cap)
            size = math.ceil(len(part) / count)
            chunks = tuple(tuple(t.index for t in part[i:i + size])
                           for i in range(0, len(part), size))
            groups.append(Group(tuple(part), cfg, packed_width, chunks))
    metric = spec.get("metric", "auto")
    if metric == "auto":
        metric = "val_accuracy" if dataset.num_classes else "val_loss"
    return Plan(all_trials, tuple(groups), metric, max(sizes), devices)


# --- running ------------------------------------------------------------------------------

def _pad_to(leaf, shape):
    return jnp.pad(leaf, [(0, t - s) for s, t in zip(leaf.shape, shape, strict=True)])


def compiler_options(run_once: bool = False) -> dict | None:
    """XLA options for sweep programs on this backend.

    On CPU, backend optimisation level 1 compiles these training programs ~2x faster than
    the default with the same run time (measured by experiments/benchmark_sweep.py), and
    compilation dominates a CPU sweep. A program that runs once (the initial draw) takes
    level 0: ~0.1 s less to compile for ~2 ms more to run.
    """
    if jax.default_backend() != "cpu":
        return None
    return {"xla_backend_optimization_level": 0 if run_once else 1}


def _hidden_structure(model: config_lib.ModelConfig) -> config_lib.ModelConfig:
    """The MLP's structure with its widths and numeric values blanked (dropout only says
    whether Dropout layers exist): trials that share it draw the same params up to width
    and init scale, so one draw at the widest widths serves them all."""
    return dataclasses.replace(model, hidden=(0,) * len(model.hidden), init_scale=1.0,
                               dropout=0.5 if model.dropout > 0 else 0.0)


class _Prologue:
    """What a chunk's trials draw before training, in one small program run once per chunk.

    It holds the sweep's random-number code, which is slow to compile (the training programs
    get the results as arguments; only dropout draws in them), and it compiles at XLA's
    lowest level:
      - the initial params of MLP-shorthand trials, drawn at the sweep's widest widths. The
        MLP's initializers are shape-stable (`jaxnn.initializers`): the draw a trial makes
        alone is the top-left block of the widest draw from the same key, times the ratio
        of the two initializers' standard deviations (`_fit_widest`). So one program per
        network depth serves every width.
      - every epoch's minibatch order (`jaxnn.train.Trainer.batches`).
    With one seed for the whole chunk, both are drawn once and shared by its trials.
    """

    def __init__(self, plan: Plan, dataset):
        self.dataset = dataset
        self.input_shape = (None, *dataset.input_shape)
        self.widest: dict[Any, tuple[int, ...]] = {}
        for trial in plan.trials:
            model = trial.config.model
            if not model.layers:
                key = _hidden_structure(model)
                old = self.widest.get(key, model.hidden)
                self.widest[key] = tuple(map(max, old, model.hidden))
        self.programs: dict[Any, Any] = {}
        self.compile_s = 0.0

    def widest_model(self, model: config_lib.ModelConfig) -> config_lib.ModelConfig | None:
        """The widest model of ``model``'s structure, or None for a ``model.layers`` net."""
        if model.layers:
            return None
        return dataclasses.replace(model, hidden=self.widest[_hidden_structure(model)])

    def __call__(self, model: config_lib.ModelConfig, trainer: Trainer, batch_size: int,
                 keys: jax.Array, shared_key: bool, dtype):
        """``(widest params or None, minibatch indices)`` for ``keys`` (one key, or one per
        trial); the params are before init scale, None for a ``model.layers`` net."""
        widest = self.widest_model(model)
        signature = (widest, shared_key, keys.shape, jnp.dtype(dtype),
                     trainer.epochs, trainer.steps_per_epoch, batch_size)
        if signature not in self.programs:
            net = None if widest is None else models.build(widest, self.dataset.output_size)

            def one(key):
                init_key, run_key = jax.random.split(key)  # as `Trainer.init` splits it
                params = None
                if net is not None:
                    _, params, _ = net.init(init_key, self.input_shape)
                    params = jax.tree.map(lambda p: p.astype(dtype), params)
                return params, trainer.batches(raw_key(run_key), 0, trainer.epochs)

            start = time.perf_counter()
            self.programs[signature] = jax.jit(one if shared_key else jax.vmap(one)).lower(
                keys).compile(compiler_options=compiler_options(run_once=True))
            self.compile_s += time.perf_counter() - start
        return self.programs[signature](keys)


def _fit_widest(widest_params, init_scale, lone_shapes, target_shapes):
    """A trial's own initial params from the widest draw: cropped to its own shapes,
    rescaled to its own initializer's spread and init scale, zero-padded to the program's."""
    w_init = initializers.get(models.MLP_W_INIT)

    def fit(path, leaf, lone, target):
        block = leaf[tuple(slice(0, n) for n in lone.shape)]
        if path[-1] == jax.tree_util.DictKey("w"):
            ratio = w_init.stddev(lone.shape) / w_init.stddev(leaf.shape)
            block = block * jnp.asarray(ratio, block.dtype) * init_scale.astype(block.dtype)
        return _pad_to(block, target.shape)

    return jax.tree_util.tree_map_with_path(fit, widest_params, lone_shapes, target_shapes)


class _GroupProgram:
    """One group's compiled, vmapped (and trial-sharded) program."""

    def __init__(self, group: Group, dataset, mesh: Mesh | None, prologue: _Prologue):
        self.group = group
        self.trainer = trainer = make_train(group.config, dataset, mesh=None,
                                            masked_width=group.packed_width)
        self.dataset = dataset
        self.mesh = mesh
        self.prologue = prologue
        self.compiled: dict[tuple, Any] = {}
        self.compile_s = 0.0
        input_shape = (None, *dataset.input_shape)

        def one_trial(key, hparams, params0, batches, data, x_test, y_test):
            state = trainer.init(key, hparams, params=params0)
            state, metrics = trainer.run_epochs(state, hparams, trainer.epochs, data, batches)
            return state.params, metrics, trainer.evaluate(state.params, state.model_state,
                                                           hparams, x_test, y_test)

        def shapes_at(hidden):
            net = models.build(dataclasses.replace(group.config.model, hidden=hidden),
                               dataset.output_size)
            return jax.eval_shape(lambda: net.init(jax.random.key(0), input_shape)[1])

        def program(layout, shared_key):
            """The chunk program; ``layout`` lists (hidden, count) runs of the sorted chunk.
            With ``shared_key`` every trial has the same seed and ``keys`` is that one key
            (and ``widest`` and ``batches`` one draw, from `_Prologue`): the data order is
            then shared, not per trial. ``widest`` is None for ``model.layers`` nets, which
            draw their own params."""
            key_axis = None if shared_key else 0

            def run_chunk(keys, hparams, widest, batches, data, x_test, y_test):
                params0 = None
                if widest is not None:
                    target = shapes_at(group.config.model.hidden)
                    parts, start = [], 0
                    for hidden, count in layout:
                        part = slice(start, start + count)
                        fit = functools.partial(_fit_widest, lone_shapes=shapes_at(hidden),
                                                target_shapes=target)
                        parts.append(jax.vmap(fit, in_axes=(key_axis, 0))(
                            widest if shared_key else jax.tree.map(lambda v, p=part: v[p],
                                                                   widest),
                            hparams["init_scale"][part]))
                        start += count
                    params0 = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
                return jax.vmap(one_trial,
                                in_axes=(key_axis, 0, 0, key_axis, None, None, None))(
                    keys, hparams, params0, batches, data, x_test, y_test)

            return jax.jit(run_chunk)

        self.program = program

    def __call__(self, chunk_trials: Sequence[Trial], size: int):
        """Trains ``chunk_trials`` (padded to ``size`` by repeating the last one).

        Returns the host metrics in ``chunk_trials`` order, and ``params_of(position)``: the
        trained params (host arrays) of ``chunk_trials[position]``.
        """
        padded = list(chunk_trials) + [chunk_trials[-1]] * (size - len(chunk_trials))
        # Sorted by width, so that each width's initial draw is one static slice.
        order = sorted(range(size), key=lambda i: padded[i].config.model.hidden)
        ordered = [padded[i] for i in order]
        layout = tuple((hidden, len(list(run))) for hidden, run in
                       itertools.groupby(t.config.model.hidden for t in ordered))
        dtype = self.trainer.dtype
        seeds = {t.config.training.seed for t in ordered}
        shared_key = len(seeds) == 1
        keys = (jax.random.key(seeds.pop()) if shared_key else
                jnp.stack([jax.random.key(t.config.training.seed) for t in ordered]))
        per_trial = [default_hparams(t.config, dtype) for t in ordered]
        hparams = {name: jnp.stack([h[name] for h in per_trial]) for name in HPARAMS}
        if self.group.packed_width:
            hparams["width"] = jnp.asarray([t.config.model.hidden[0] for t in ordered],
                                           jnp.int32)
        if self.mesh is not None:
            sharding = NamedSharding(self.mesh, PartitionSpec("trials"))
            keys = jax.device_put(keys, NamedSharding(self.mesh, PartitionSpec())
                                  if shared_key else sharding)
            hparams = jax.device_put(hparams, sharding)
        widest, batches = self.prologue(self.group.config.model, self.trainer,
                                        self.group.config.training.batch_size, keys,
                                        shared_key, dtype)
        args = [keys, hparams, widest, batches]
        test = (self.trainer.data, jnp.asarray(self.dataset.x_test, dtype),
                jnp.asarray(self.dataset.y_test))
        signature = (layout, shared_key)
        if signature not in self.compiled:
            start = time.perf_counter()
            self.compiled[signature] = self.program(*signature).lower(*args, *test).compile(
                compiler_options=compiler_options())
            self.compile_s += time.perf_counter() - start
        params, metrics, test_metrics = self.compiled[signature](*args, *test)
        back = np.argsort(order)[: len(chunk_trials)]
        if jax.process_count() > 1:  # Trials sharded over hosts: gather every host's rows.
            from jax.experimental import multihost_utils

            metrics, test_metrics = multihost_utils.process_allgather(
                (metrics, test_metrics), tiled=True)
        metrics, test_metrics = jax.tree.map(lambda v: np.asarray(v)[back],
                                             jax.device_get((metrics, test_metrics)))
        # Copied to the host once, on demand: indexing on the device would compile gathers.
        host_params = functools.cache(lambda: jax.device_get(params))

        def params_of(position):
            return jax.tree.map(lambda p: p[back[position]], host_params())

        return (metrics, test_metrics), params_of


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


def _result_rows(chunk_trials, metrics, test_metrics) -> list[dict]:
    rows = []
    for position, trial in enumerate(chunk_trials):
        bad = metrics["nonfinite_step"][position]
        diverged = bool(np.any(bad >= 0))
        row = {"trial": trial.index, "values": trial.values,
               "status": "diverged" if diverged else "completed",
               "diverged_step": int(bad[bad >= 0][0]) if diverged else None}
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            if name in metrics:
                row[name] = None if diverged else _finite(metrics[name][position][-1])
        for name in ("loss", "accuracy"):
            row[f"test_{name}"] = None if diverged else _finite(test_metrics[name][position])
        row["curves"] = {name: [_finite(v) for v in metrics[name][position]]
                         for name in ("train_loss", "val_loss", "val_accuracy") if name in metrics}
        rows.append(row)
    return rows


def read_results(workdir: str) -> list[dict]:
    """The trial results written so far (a line cut short by a kill is dropped: its chunk is
    rerun)."""
    return jsonl.read(os.path.join(workdir, RESULTS))


def run_sweep(
    config: Config,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    dataset=None,
    return_params: bool = False,
) -> dict[str, Any]:
    """Runs a sweep and writes its results, table, best config and plots to ``workdir``.

    Args:
      config: a config with a ``[sweep]`` section.
      workdir: the sweep directory.
      resume: skip the chunks whose trials ``results.jsonl`` already holds.
      dataset: the prepared data (loaded from the config when None).
      return_params: also return each trial's final parameters (tests use this).

    Returns:
      ``{"results": [...], "best": {...}, "programs_compiled": n, "wall_time_s": ...,
      "plan": Plan, ...}``.

    Raises:
      ConfigError: for a bad sweep or config, before anything is compiled.
      jaxnn.run.RunError: when ``workdir`` holds another sweep or a finished one and
        ``resume`` is False, or another process is writing it.
    """
    from jaxnn import run

    started = time.perf_counter()
    run.enable_precision(config)
    workdir = os.fspath(workdir)
    if dataset is None:
        dataset = run.prepare(config)
    plan = make_plan(config, dataset)
    # With several hosts (jax.distributed), every host computes and the first one writes.
    writer = jax.process_index() == 0
    with rundir.locked(workdir) if writer else contextlib.nullcontext():
        done = _start(config, plan, workdir, resume, writer)
        return _run_groups(config, plan, dataset, workdir, done, writer, return_params, started)


def _start(config: Config, plan: Plan, workdir: str, resume: bool, writer: bool) -> dict:
    """Checks the sweep directory and returns the finished trials by index (resume); writes
    the config and an empty results file for a new sweep."""
    results_path = os.path.join(workdir, RESULTS)
    if os.path.exists(results_path) and not resume:
        raise rundir.RunError(f"{workdir} already holds a sweep; continue it with --resume or "
                           "choose another directory")
    if resume and not os.path.exists(results_path):
        raise rundir.RunError(f"{workdir}: nothing to resume ({RESULTS} not found)")
    rows = (jsonl.repair(results_path) if writer else jsonl.read(results_path)) if resume else []
    done = {row["trial"]: row for row in rows}
    for index, row in done.items():
        if index >= len(plan.trials) or row["values"] != plan.trials[index].values:
            raise rundir.RunError(f"{results_path} was written by a different sweep (trial "
                               f"{index} differs); use another directory")
    if writer and not resume:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, SWEEP_CONFIG), "w") as handle:
            handle.write(config_lib.dumps(config))
        jsonl.rewrite(results_path, [])
    return done


def _run_groups(config, plan, dataset, workdir, done, writer, return_params, started) -> dict:
    """Trains the unfinished chunks group by group, appending their rows; writes the report."""
    from jaxnn import sweep_report

    results_path = os.path.join(workdir, RESULTS)
    mesh = Mesh(np.array(jax.devices()), ("trials",)) if plan.devices > 1 else None
    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan.trials), initial=len(done), unit="trial",
               disable=not config.training.progress, leave=False, dynamic_ncols=True)
    compiled, compile_s, params_out = 0, 0.0, {}
    prologue = _Prologue(plan, dataset)
    try:
        for group in plan.groups:
            todo = [c for c in group.chunks if not all(i in done for i in c)]
            if not todo:
                continue
            program = _GroupProgram(group, dataset, mesh, prologue)
            size = math.ceil(max(len(c) for c in group.chunks) / plan.devices) * plan.devices
            for chunk in todo:
                chunk_trials = [plan.trials[i] for i in chunk]
                (metrics, test_metrics), params_of = program(chunk_trials, size)
                rows = _result_rows(chunk_trials, metrics, test_metrics)
                if writer:
                    jsonl.append(results_path, rows)
                done.update({row["trial"]: row for row in rows})
                if return_params:
                    for position, trial in enumerate(chunk_trials):
                        params_out[trial.index] = params_of(position)
                bar.update(len(chunk))
            compiled += len(program.compiled)
            compile_s += program.compile_s
    finally:
        bar.close()
    compile_s += prologue.compile_s
    results = [done[t.index] for t in plan.trials]
    report = sweep_report.write(config, plan, results, workdir) if writer else {
        "table": table(plan, results), "best": None, "plots": []}
    summary = {"results": results, "best": report["best"], "table": report["table"],
               "programs_compiled": compiled, "compile_time_s": compile_s,
               "wall_time_s": time.perf_counter() - started, "plots": report["plots"],
               "params": params_out if return_params else None, "plan": plan}
    return summary


def _own_param_shapes(trial: Trial, dataset) -> Any:
    """The parameter shapes of a trial's network at its own width (no allocation)."""
    net = models.build(trial.config.model, dataset.output_size)
    return jax.eval_shape(lambda k: net.init(k, (None, *dataset.input_shape))[1],
                          jax.ShapeDtypeStruct((2,), jnp.uint32))


def trial_params_unpadded(params: Any, trial: Trial, dataset) -> Any:
    """A packed trial's final parameters cropped to its own width."""
    return jax.tree.map(lambda p, s: p[tuple(slice(0, n) for n in s.shape)], params,
                        _own_param_shapes(trial, dataset))


def param_counts(plan: Plan, dataset) -> dict[int, int]:
    """Each trial's own parameter count (for reports)."""
    return {t.index: param_count(_own_param_shapes(t, dataset)) for t in plan.trials}


def best_config(plan: Plan, results: list[dict]) -> Config | None:
    """The winning trial's config (sweep section removed), or None if every trial diverged."""
    ranked = rank(plan, results)
    if not ranked or ranked[0]["status"] != "completed":
        return None
    return dataclasses.replace(plan.trials[ranked[0]["trial"]].config, sweep={})


def rank(plan: Plan, results: list[dict]) -> list[dict]:
    """Results sorted best first by the plan's metric; diverged trials last."""
    higher = plan.metric.endswith("accuracy")

    def key(row):
        value = row.get(plan.metric)
        if value is None or row["status"] != "completed":
            return (1, 0.0)
        return (0, -value if higher else value)

    return sorted(results, key=key)


def swept_names(plan: Plan) -> list[str]:
    """The swept hyperparameters' names, in the order the sweep names them."""
    return list(dict.fromkeys(name for t in plan.trials for name in t.values))


def table(plan: Plan, results: list[dict]) -> str:
    """The printed results table, best first."""
    names = swept_names(plan)
    header = ["trial", *names, "train_loss", "val_loss", "val_acc", "test_loss", "test_acc",
              "status"]

    def fmt(value, digits=4):
        return "-" if value is None else f"{value:.{digits}g}" if isinstance(value, float) \
            else str(value)

    rows = [[row["trial"], *[fmt(row["values"].get(n)) for n in names],
             fmt(row.get("train_loss")), fmt(row.get("val_loss")), fmt(row.get("val_accuracy")),
             fmt(row.get("test_loss")), fmt(row.get("test_accuracy")),
             row["status"] + (f" @ step {row['diverged_step']}" if row["diverged_step"] is not None
                              else "")]
            for row in rank(plan, results)]
    return format_table(header, rows)


def write_csv(path: str, plan: Plan, results: list[dict]) -> None:
    """The results as CSV, best first."""
    names = swept_names(plan)
    fields = ["trial", *names, "train_loss", "train_accuracy", "val_loss", "val_accuracy",
              "test_loss", "test_accuracy", "status", "diverged_step"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for row in rank(plan, results):
            writer.writerow([row["trial"], *[row["values"].get(n) for n in names],
                             *[row.get(f) for f in fields[1 + len(names):]]])

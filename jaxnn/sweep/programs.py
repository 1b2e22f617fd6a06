"""The compiled programs: a group's vmapped (and trial-sharded) training program, and the
small prologue that draws initial params and minibatch orders once per chunk."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnn import config as config_lib
from jaxnn import models
from jaxnn.sweep.packing import fit_widest, hidden_structure, masked_network
from jaxnn.sweep.plan import Group, Plan
from jaxnn.sweep.spec import Trial
from jaxnn.train import HPARAMS, Trainer, default_hparams, make_train, raw_key


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


class Prologue:
    """What a chunk's trials draw before training, in one small program run once per chunk.

    It holds the sweep's random-number code, which is slow to compile (the training programs
    get the results as arguments; only dropout draws in them), and it compiles at XLA's
    lowest level:
      - the initial params of MLP-shorthand trials, drawn at the sweep's widest widths. The
        MLP's initializers are shape-stable (`jaxnn.initializers`): the draw a trial makes
        alone is the top-left block of the widest draw from the same key, times the ratio
        of the two initializers' standard deviations (`fit_widest`). So one program per
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
                key = hidden_structure(model)
                old = self.widest.get(key, model.hidden)
                self.widest[key] = tuple(map(max, old, model.hidden))
        self.programs: dict[Any, Any] = {}
        self.compile_s = 0.0

    def widest_model(self, model: config_lib.ModelConfig) -> config_lib.ModelConfig | None:
        """The widest model of ``model``'s structure, or None for a ``model.layers`` net."""
        if model.layers:
            return None
        return dataclasses.replace(model, hidden=self.widest[hidden_structure(model)])

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


class GroupProgram:
    """One group's compiled, vmapped (and trial-sharded) program."""

    def __init__(self, group: Group, dataset, mesh: Mesh | None, prologue: Prologue):
        self.group = group
        self.trainer = trainer = make_train(
            group.config, dataset, mesh=None,
            network=masked_network(group.config, dataset.output_size, group.packed_width)
            if group.packed_width else None)
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
            (and ``widest`` and ``batches`` one draw, from `Prologue`): the data order is
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
                        fit = functools.partial(fit_widest, lone_shapes=shapes_at(hidden),
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

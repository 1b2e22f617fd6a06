"""The compiled programs: a group's vmapped (and trial-sharded) training program, and the
small prologue that draws initial params and minibatch orders once per chunk."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnn import config as config_lib
from jaxnn import executable_cache, models
from jaxnn.compile_options import compile_lowered, compiler_options
from jaxnn.config import Config
from jaxnn.sweep import channels, cost
from jaxnn.sweep.packing import (
    fit_inputs,
    fit_widest,
    hidden_structure,
    masked_network,
    model_param_shapes,
    own_param_shapes,
)
from jaxnn.sweep.spec import Trial
from jaxnn.train import (
    Trainer,
    TrainState,
    make_train,
    raw_key,
    scale_weights,
    stacked_hparams,
    to_device,
)


@functools.cache
def _background() -> concurrent.futures.ThreadPoolExecutor:
    """The thread that compiles prologue programs while the host traces training programs
    (XLA's compiler releases the GIL)."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxnn-compile")


def seed_key_data(seed: int) -> np.ndarray:
    """The raw data of ``jax.random.key(seed)`` (JAX's default implementation) as a host
    array, made once per seed: the sweep's programs take keys as data and wrap them, so
    that giving each trial its seed's key is host indexing, not small device programs."""
    return _key_data(seed, str(jax.config.jax_default_prng_impl))


@functools.cache
def _key_data(seed: int, implementation: str) -> np.ndarray:
    del implementation  # the cache's key: the default implementation may change
    return np.asarray(jax.random.key_data(jax.random.key(seed)))


def compile_timed(jitted, args: Sequence[Any], options: dict | None,
                  identity: Any) -> tuple[Any, float, bool]:
    """``(compiled, seconds, loaded)``: ``jitted`` compiled for ``args`` with ``options``,
    or loaded by `executable_cache.compile_program` (``identity``: see there)."""
    start = time.perf_counter()
    compiled, loaded = executable_cache.compile_program(jitted, args, options, identity,
                                                        compile_lowered)
    return compiled, time.perf_counter() - start, loaded


class Prologue:
    """What a chunk's trials draw before training, in one small program per shape.

    It holds the sweep's random-number code, which is slow to compile (the training programs
    get the results as arguments; only dropout draws in them), and it compiles at XLA's
    lowest level:
      - the initial params of MLP-shorthand trials, drawn at the sweep's widest widths. The
        MLP's initializers are shape-stable (`jaxnn.initializers`): the draw a trial makes
        alone is the top-left block of the widest draw from the same key, times the ratio
        of the two initializers' standard deviations (`fit_widest`). So one program per
        network depth serves every width.
      - the minibatch order of the epochs a segment trains (`jaxnn.train.Trainer.batches`).
      - the initial params of ``model.layers`` trials whose channels are packed, drawn at
        each trial's own channels (`own_params`) and zero-padded by `channels.embed_params`.
    The widest draw and the orders are drawn once per seed: with one seed for the whole
    chunk, that draw is shared by its trials; with several, `per_trial` gives each trial
    its seed's.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.input_shape = (None, *dataset.input_shape)
        self.widest: dict[Any, tuple[int, ...]] = {}
        self.programs: dict[Any, Any] = {}
        self.draws: dict[Any, concurrent.futures.Future] = {}  # compiled draw programs
        self.out_shapes: dict[Any, Any] = {}  # what they return
        self.compile_s = 0.0
        self._data_key: str | None = None

    def identity(self, *parts) -> tuple | None:
        """A sweep program's `executable_cache` identity: ``parts``, which say what it
        closes over, and a digest of the data set (computed once); None while that cache is
        off."""
        if executable_cache.directory() is None:
            return None
        if self._data_key is None:
            self._data_key = self.dataset.digest()
        return (*parts, self._data_key)

    def compile(self, jitted, args: Sequence[Any], options: dict | None, *parts):
        """``jitted`` compiled for ``args`` or loaded (`executable_cache`), the seconds
        counted."""
        compiled, seconds, _ = compile_timed(jitted, args, options, self.identity(*parts))
        self.compile_s += seconds
        return compiled

    def widen(self, models_: Sequence[config_lib.ModelConfig]) -> None:
        """Makes the widest draw at least as wide as each of ``models_`` (the programs'
        padded models). Any widest draw gives every trial the same params."""
        for model in models_:
            if not model.layers:
                key = hidden_structure(model)
                old = self.widest.get(key, model.hidden)
                self.widest[key] = tuple(map(max, old, model.hidden))

    def widest_model(self, model: config_lib.ModelConfig) -> config_lib.ModelConfig | None:
        """The widest model of ``model``'s structure, or None for a ``model.layers`` net."""
        if model.layers:
            return None
        return dataclasses.replace(model, hidden=self.widest[hidden_structure(model)])

    def __call__(self, model: config_lib.ModelConfig, trainer: Trainer, batch_size: int,
                 keys: jax.Array, shared_key: bool, dtype, with_params: bool):
        """``(widest params or None, minibatch indices of every epoch)`` for ``keys`` (one
        key's data, `seed_key_data`, or a stack of them: one per distinct seed, see
        `per_trial`); the params are before init scale, None for a ``model.layers`` net or
        without ``with_params``."""
        return self._program(self._start(model, trainer, batch_size, keys, shared_key, dtype,
                                          with_params))(keys)

    def shapes(self, model: config_lib.ModelConfig, trainer: Trainer, batch_size: int,
               keys: jax.Array, shared_key: bool, dtype, with_params: bool):
        """The shapes (`jax.ShapeDtypeStruct`s) of what the call with these arguments
        returns, its program lowered here and compiled on a background thread: the XLA
        compile of this level-0 program (~0.5 s, mostly its threefry draws) overlaps the
        tracing and lowering of the training program, which needs only these shapes."""
        return self.out_shapes[self._start(model, trainer, batch_size, keys, shared_key, dtype,
                                           with_params)]

    def _start(self, model, trainer, batch_size, keys, shared_key, dtype, with_params):
        """The program's signature, its compile begun if it was not."""
        widest = self.widest_model(model) if with_params else None
        signature = (widest, shared_key, keys.shape, jnp.dtype(dtype), trainer.epochs,
                     trainer.steps_per_epoch, batch_size)
        if signature not in self.draws:
            net = None if widest is None else models.build(widest, self.dataset.output_size)

            def one(key_data):
                # as `Trainer.init` splits it
                init_key, run_key = jax.random.split(jax.random.wrap_key_data(key_data))
                params = None
                if net is not None:
                    _, params, _ = net.init(init_key, self.input_shape)
                    params = jax.tree.map(lambda p: p.astype(dtype), params)
                return params, trainer.batches(raw_key(run_key), 0, trainer.epochs)

            self._begin(signature, jax.jit(one if shared_key else jax.vmap(one)), (keys,),
                        "prologue", *signature)
        return signature

    def begin_per_trial(self, drawn: Any, position: Any) -> tuple:
        """Begins compiling `per_trial`'s program for arrays (or their
        `jax.ShapeDtypeStruct`s) like these; returns its signature."""
        shapes = jax.tree.map(lambda a: (a.shape, a.dtype), drawn)
        signature = ("per trial", repr(shapes), position.shape)
        self._begin(signature, jax.jit(_rows_of), (drawn, position), *signature)
        return signature

    def per_trial(self, drawn: Any, position: jax.Array) -> Any:
        """``drawn`` (arrays with one row per distinct seed) with one row per trial, trial
        ``i`` taking row ``position[i]``: trials of one seed share a draw, made once. (Drawn
        per trial, the 512-trial sweep of 16 seeds ran its level-0 prologue for 2.0 s, more
        than its training.) The result is laid out like ``position``."""
        return self._program(self.begin_per_trial(drawn, position))(drawn, position)

    def _begin(self, signature: tuple, jitted, args: Sequence[Any], *parts) -> None:
        """Once per ``signature``: lowers (or loads) ``jitted`` for ``args`` here and
        compiles it on the background thread, at XLA's level 0 (``parts``: its
        `executable_cache` identity, see `identity`)."""
        if signature not in self.draws:
            start = time.perf_counter()
            finish, self.out_shapes[signature] = executable_cache.begin_program(
                jitted, args, compiler_options(run_once=True), self.identity(*parts),
                compile_lowered)
            self.compile_s += time.perf_counter() - start
            self.draws[signature] = _background().submit(lambda: finish()[0])

    def _program(self, signature: tuple):
        """The program `_begin` began, compiled (waiting for it)."""
        start = time.perf_counter()
        program = self.draws[signature].result()
        self.compile_s += time.perf_counter() - start  # waited for: not overlapped
        return program

    def own_params(self, models_: Sequence[config_lib.ModelConfig], seed: int,
                   dtype) -> tuple:
        """The params each of ``models_`` (``model.layers`` nets) draws alone with ``seed``
        (before the init scale), as host arrays: one small program draws them all (three
        CNNs' draws compiled in 1.2-1.5 s, against 1.8-2.3 s as three programs)."""
        signature = ("own", tuple(channels.model_key(m) for m in models_), jnp.dtype(dtype))
        if signature not in self.programs:
            nets = [models.build(model, self.dataset.output_size) for model in models_]

            def draw(key_data):
                # as `Trainer.init` splits it
                init_key, _ = jax.random.split(jax.random.wrap_key_data(key_data))
                return tuple(jax.tree.map(lambda p: p.astype(dtype),
                                          net.init(init_key, self.input_shape)[1])
                             for net in nets)

            self.programs[signature] = self.compile(
                jax.jit(draw), (seed_key_data(0),), compiler_options(run_once=True),
                "own params", tuple(models_), jnp.dtype(dtype))
        return jax.device_get(self.programs[signature](seed_key_data(seed)))


class Segment(NamedTuple):
    """What `GroupProgram` returns for a chunk's segment of epochs, host arrays in the
    chunk's trial order: ``metrics`` per epoch (leading axes trial, epoch), ``test`` metrics
    (after the last epoch, else None) and ``state_of(position)``, a trial's `TrainState`."""

    metrics: dict
    test: dict | None
    state_of: Callable[[int], TrainState]


class Started(NamedTuple):
    """A chunk's program, started: ``collect()`` waits for its `Segment`; ``ready()`` says
    whether it has finished."""

    collect: Callable[[], Segment]
    ready: Callable[[], bool]


class GroupProgram:
    """One group's compiled, vmapped (and trial-sharded) training programs.

    A chunk that trains every epoch at once (a sweep without pruning) runs one program:
    initial state, all epochs, test metrics. A pruned sweep trains in segments between its
    rungs: a small program draws the initial states, and one segment program per chunk size
    trains from any epoch to any later one (the bounds are arguments, so every segment of a
    size shares it) and evaluates on the test split at its end.
    """

    def __init__(self, config: Config, packed_width: int | None, dataset, mesh: Mesh | None,
                 prologue: Prologue, packed_layers: tuple[int, ...] = ()):
        self.config = config
        self.packed_width = packed_width
        self.packed_layers = packed_layers
        network = None
        if packed_width:
            network = masked_network(config, dataset.output_size, packed_width)
        elif packed_layers:
            network = channels.masked_network(config, dataset.output_size, packed_layers)
        self.trainer = trainer = make_train(config, dataset, mesh=None, network=network)
        # A training step's, for the compiler options; None: unknown.
        self.step_flops = cost.program_step_flops(config, dataset.input_shape, dataset.output_size)
        self.dataset = dataset
        self.test_data = (to_device(dataset.x_test, trainer.dtype),
                          jax.device_put(np.asarray(dataset.y_test)))
        self.mesh = mesh
        self.prologue = prologue
        self.compiled: dict[tuple, Any] = {}
        self.loaded = 0  # of them, loaded from `executable_cache`
        self.compile_s = 0.0
        # With one seed, every trial's minibatch order is one draw, kept for later segments.
        self.shared_batches: dict[int, jax.Array] = {}
        self.target = model_param_shapes(config.model, tuple(dataset.input_shape),
                                         dataset.output_size) if not config.model.layers \
            else None
        epochs = trainer.epochs

        def begin(key_data, hparams, widest, own):
            """A trial's initial state, from its seed's `seed_key_data`. Its params: from
            the widest draw, with ``own`` its `fit_inputs` (an MLP); ``own`` itself, a
            trial's own draw zero-padded (packed channels); else (both None) the trainer
            draws them."""
            key = jax.random.wrap_key_data(key_data)
            params0 = None
            if widest is not None:
                params0 = fit_widest(widest, hparams["init_scale"], *own, self.target)
            elif own is not None:
                params0 = scale_weights(own, hparams["init_scale"], trainer.dtype)
            return trainer.init(key, hparams, params=params0)

        def whole(key, hparams, widest, own, batches, data, x_test, y_test):
            state = begin(key, hparams, widest, own)
            state, metrics = trainer.run_epochs(state, hparams, epochs, data, batches)
            return state, metrics, trainer.evaluate(state.params, state.model_state, hparams,
                                                    x_test, y_test)

        def segment(state, hparams, batches, start, stop, data, x_test, y_test):
            """Epochs ``start`` to ``stop`` (traced), one compiled epoch in a loop; the
            metrics land in an every-epoch buffer."""
            def epoch(e, carry):
                state, buffer = carry
                state, metrics = trainer.run_epochs(
                    state, hparams, 1, data, jax.lax.dynamic_slice_in_dim(batches, e, 1))
                return state, jax.tree.map(
                    lambda b, m: jax.lax.dynamic_update_slice_in_dim(b, m, e, 0), buffer,
                    metrics)

            shapes = jax.eval_shape(lambda: trainer.run_epochs(state, hparams, 1, data,
                                                               batches[:1])[1])
            buffer = jax.tree.map(lambda s: jnp.zeros((epochs, *s.shape[1:]), s.dtype),
                                  shapes)
            state, buffer = jax.lax.fori_loop(start, stop, epoch, (state, buffer))
            return state, buffer, trainer.evaluate(state.params, state.model_state, hparams,
                                                   x_test, y_test)

        def program(kind: str, shared_key: bool):
            """``kind``: "whole", "init" or "segment". With ``shared_key`` every trial has
            the same seed: ``keys`` is that one key, and ``widest`` and ``batches`` one draw
            (from `Prologue`)."""
            k = None if shared_key else 0
            if kind == "init":
                return jax.jit(jax.vmap(begin, in_axes=(k, 0, k, 0)))
            if kind == "whole":
                return jax.jit(jax.vmap(whole, in_axes=(k, 0, k, 0, k, None, None, None)))
            return jax.jit(jax.vmap(segment, in_axes=(0, 0, k, None, None, None, None, None)))

        self.program = program

    def _fit_inputs(self, trials: Sequence[Trial], widest_model) -> tuple[Any, Any]:
        widest = model_param_shapes(widest_model, tuple(self.dataset.input_shape),
                                    self.dataset.output_size)
        per_trial = [fit_inputs(own_param_shapes(t, self.dataset), widest, self.trainer.dtype)
                     for t in trials]
        return jax.tree.map(lambda *xs: np.stack(xs), *per_trial)

    def _own_params(self, trials: Sequence[Trial]) -> Any:
        """Each trial's own initial params (packed channels), zero-padded and stacked."""
        shape, size, dtype = self.dataset.input_shape, self.dataset.output_size, \
            self.trainer.dtype
        by_key = {channels.model_key(t.config.model): t.config.model for t in trials}
        keys = sorted(by_key)
        drawn = {}
        for seed in sorted({t.config.training.seed for t in trials}):
            own = self.prologue.own_params([by_key[k] for k in keys], seed, dtype)
            for k, params in zip(keys, own, strict=True):
                drawn[k, seed] = channels.embed_params(params, by_key[k], self.config.model,
                                                       shape, size)
        return jax.tree.map(lambda *xs: np.stack(xs), *[
            drawn[channels.model_key(t.config.model), t.config.training.seed] for t in trials])

    def _run(self, kind: str, shared_key: bool, size: int, args: Sequence[Any]):
        return self._compiled(kind, shared_key, size, args)(*args)

    def _compiled(self, kind: str, shared_key: bool, size: int, args: Sequence[Any]):
        """The ``kind`` program compiled (or loaded) for ``args``: arrays, or the
        `jax.ShapeDtypeStruct`s of those not made yet, laid out as they will be."""
        signature = (kind, shared_key, size)
        # A later batch's widest draw may be wider (`Prologue.widen`): another program.
        key = (*signature, tuple(np.shape(leaf) for leaf in jax.tree.leaves(args)))
        if key not in self.compiled:
            seconds = cost.training_seconds(
                size, self.trainer.epochs * self.trainer.steps_per_epoch, self.step_flops,
                jax.default_backend())
            self.compiled[key], spent, loaded = compile_timed(
                self.program(kind, shared_key), args,
                compiler_options(run_once=kind == "init",
                                 use_older_emitters=cost.older_emitters(self.config, seconds)),
                # The config file's path names errors only: a resumed sweep, which reads
                # the config from its directory, finds the same programs.
                self.prologue.identity("group", *signature, self.config.replace(source=""),
                                       self.packed_width, self.packed_layers, self.mesh))
            self.compile_s += spent
            self.loaded += loaded
        return self.compiled[key]

    def segment_sizes(self) -> list[int]:
        """The chunk sizes a segment program is compiled for."""
        return sorted({size for kind, _, size, _ in self.compiled if kind == "segment"})

    def _host_inputs(self, padded: Sequence[Trial]):
        """A chunk's per-trial inputs, as host arrays: as device arrays each would compile
        small programs to be made, indexed and laid out (~0.3 s of a 128-trial sweep).

        Returns ``(seeds, position, seed_keys, keys, hparams)``: the prologue draws for each
        of the sorted ``seeds``' key (``seed_keys``); trial i trains with ``keys[i]``, the
        key of ``seeds[position[i]]`` (with one seed, that one key); ``hparams`` stacked,
        with the packed widths and channel counts.
        """
        seeds = sorted({t.config.training.seed for t in padded})
        position = np.asarray([seeds.index(t.config.training.seed) for t in padded], np.int32)
        seed_keys = seed_key_data(seeds[0]) if len(seeds) == 1 else \
            np.stack([seed_key_data(seed) for seed in seeds])
        keys = seed_keys if len(seeds) == 1 else seed_keys[position]
        hparams = stacked_hparams([t.config for t in padded], self.trainer.dtype)
        if self.packed_width:
            hparams["width"] = np.asarray([t.config.model.hidden[0] for t in padded], np.int32)
        if self.packed_layers:
            hparams["channels"] = np.asarray(
                [channels.features(t.config, self.packed_layers) for t in padded], np.int32)
        return seeds, position, seed_keys, keys, hparams

    def dispatch(self, chunk_trials: Sequence[Trial], size: int, states, first_epoch: int,
                 stop_epoch: int) -> Started:
        """Starts training ``chunk_trials`` (padded to ``size`` by repeating the last one)
        from epoch ``first_epoch`` to ``stop_epoch``: from scratch when ``first_epoch`` is 0,
        else from ``states`` (one `TrainState` per trial, host arrays). Compiles its program
        if need be, and returns before it has run."""
        padded = list(chunk_trials) + [chunk_trials[-1]] * (size - len(chunk_trials))
        dtype, epochs = self.trainer.dtype, self.trainer.epochs
        seeds, position, seed_keys, keys, hparams = self._host_inputs(padded)
        shared_key = len(seeds) == 1
        sharding = replicated = None
        if self.mesh is not None:
            sharding = NamedSharding(self.mesh, PartitionSpec("trials"))
            replicated = NamedSharding(self.mesh, PartitionSpec())
            keys = _put(keys, replicated if shared_key else sharding)
            seed_keys = _put(seed_keys, replicated)
            hparams = _put(hparams, sharding)
        # With several processes every argument is a global array; one process places the
        # rest itself.
        spread = jax.process_count() > 1
        shared_seed = seeds[0] if shared_key else None
        drawn_layout = replicated if shared_key else sharding
        draw_args = None
        if first_epoch > 0 and shared_seed in self.shared_batches:
            widest, batches = None, self.shared_batches[shared_seed]  # drawn by segment 1
        else:
            draw_args = (self.config.model, self.trainer, self.config.training.batch_size,
                         seed_keys, shared_key, dtype, first_epoch == 0)
            # Their shapes for now: the first program compiles as the draws' program does.
            drawn = self.prologue.shapes(*draw_args)
            if not shared_key:  # one row per seed, then one per trial
                position = _put(position, sharding)
                self.prologue.begin_per_trial(_abstract(drawn, None, replicated), position)
            widest, batches = _abstract(drawn, None if shared_key else size, drawn_layout)
        test = (self.trainer.data, *self.test_data)
        test = _put(test, replicated) if spread else test
        if first_epoch == 0:
            own = None
            if widest is not None:
                own = self._fit_inputs(padded, self.prologue.widest_model(self.config.model))
            elif self.packed_layers:
                own = self._own_params(padded)
            own = _put(own, sharding) if spread else own
        whole = first_epoch == 0 and stop_epoch == epochs
        first = "whole" if whole else "init" if first_epoch == 0 else None
        if first is not None:
            program = self._compiled(first, shared_key, size, (
                keys, hparams, widest, own, *((batches, *test) if whole else ())))
        if draw_args is not None:
            widest, batches = self.prologue(*draw_args)
            if shared_key:
                self.shared_batches[shared_seed] = batches
            else:
                widest, batches = self.prologue.per_trial(
                    _put((widest, batches), replicated), position)
            widest, batches = _put((widest, batches), drawn_layout)  # as compiled for
        if whole:
            state, metrics, test_metrics = program(keys, hparams, widest, own, batches, *test)
        else:
            if first_epoch == 0:
                start = program(keys, hparams, widest, own)
            else:
                padded_states = list(states) + [states[-1]] * (size - len(states))
                start = jax.tree.map(lambda *xs: np.stack(xs), *padded_states)
            # One layout for every call: states split over the trial axis.
            start = _put(start, sharding)
            bounds = (np.int32(first_epoch), np.int32(stop_epoch))
            bounds = _put(bounds, replicated) if spread else bounds
            state, metrics, test_metrics = self._run("segment", shared_key, size,
                                                     (start, hparams, batches, *bounds, *test))
        outputs = jax.tree.leaves((state, metrics, test_metrics))
        return Started(functools.partial(_collect, len(chunk_trials), state, metrics,
                                         test_metrics,
                                         None if whole else (first_epoch, stop_epoch),
                                         stop_epoch == epochs),
                       lambda: all(leaf.is_ready() for leaf in outputs))


def _rows_of(tree: Any, rows: jax.Array) -> Any:
    """``tree``'s arrays indexed by ``rows`` along their first axis."""
    return jax.tree.map(lambda a: a[rows], tree)


def _abstract(shapes: Any, rows: int | None, sharding) -> Any:
    """`jax.ShapeDtypeStruct`s of ``shapes`` (leading axis ``rows`` long where given), laid
    out by ``sharding``."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(
        s.shape if rows is None else (rows, *s.shape[1:]), s.dtype, sharding=sharding), shapes)


def _collect(count: int, state, metrics, test_metrics, epochs: tuple[int, int] | None,
             final: bool) -> Segment:
    """The `Segment` of a dispatched chunk's outputs (waiting for them): the first ``count``
    trials' rows, the metrics of ``epochs`` (start, stop) where they fill an every-epoch
    buffer (a segment program), the test metrics where ``final``."""
    metrics, test_metrics = jax.tree.map(lambda v: np.asarray(v)[:count],
                                         _gathered((metrics, test_metrics)))
    if epochs is not None:
        metrics = {k: v[:, epochs[0]:epochs[1]] for k, v in metrics.items()}
    # Copied to the host once, on demand: indexing on the device would compile gathers.
    host_state = functools.cache(lambda: _gathered(state))

    def state_of(position):
        return jax.tree.map(lambda v: v[position], host_state())

    return Segment(metrics, test_metrics if final else None, state_of)


def _put(tree, sharding):
    """``tree`` laid out by ``sharding`` (None: as it is). With several processes (each
    holding the same host values), as global arrays built from each process's part."""
    if sharding is None:
        return tree
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(value):
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            return jax.device_put(value, sharding)
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def _gathered(tree):
    """``tree`` on the host, whole: with several processes, every process's part."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)

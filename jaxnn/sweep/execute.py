"""Running a sweep: the directory (locked), its batches of trials (the whole grid, or what an
Optuna sampler asks), training each batch in segments between pruning rungs, streaming rows to
``results.jsonl`` and the study, resume, and the report at the end."""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxnn import config as config_lib
from jaxnn import host, jsonl, processes, rundir
from jaxnn.config import Config, ConfigError
from jaxnn.sweep import pruning, report, search
from jaxnn.sweep.packing import reuse_size
from jaxnn.sweep.plan import Group, Plan, check_trials, make_plan, order_bytes, structure
from jaxnn.sweep.programs import GroupProgram, Prologue, Segment, Started
from jaxnn.sweep.spec import make_trial

RESULTS = "results.jsonl"


SWEEP_CONFIG = "sweep.toml"


CURVES = ("train_loss", "val_loss", "val_accuracy")


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


def result_rows(chunk_trials, metrics, test_metrics) -> list[dict]:
    """The rows of trials that stopped: ``metrics`` per epoch trained so far (leading axes
    trial, epoch), ``test_metrics`` after the last epoch, or None for trials pruned (or
    diverged) before it."""
    rows = []
    for position, trial in enumerate(chunk_trials):
        bad = metrics["nonfinite_step"][position]
        diverged = bool(np.any(bad >= 0))
        status = ("diverged" if diverged else "completed" if test_metrics is not None
                  else "pruned")
        # A diverged trial's curves hold nothing from the epoch it diverged in: those epochs
        # were computed from non-finite params (their accuracy is meaningless). They keep
        # their length, the epochs its chunk trained, as a pruning rung reads them.
        finite = int(np.argmax(bad >= 0)) if diverged else len(bad)
        row = {"trial": trial.index, "values": trial.values, "status": status,
               "diverged_step": int(bad[bad >= 0][0]) if diverged else None,
               "epochs": finite + 1 if diverged else finite}
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            if name in metrics:
                row[name] = None if diverged else _finite(metrics[name][position][-1])
        for name in ("loss", "accuracy"):
            row[f"test_{name}"] = (None if diverged or test_metrics is None
                                   else _finite(test_metrics[name][position]))
        row["curves"] = {name: [_finite(v) if epoch < finite else None
                                for epoch, v in enumerate(metrics[name][position])]
                         for name in CURVES if name in metrics}
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
    """Runs a sweep and writes its results, study, table, best config and plots to ``workdir``.

    Args:
      config: a config with a ``[sweep]`` section.
      workdir: the sweep directory.
      resume: skip the trials ``results.jsonl`` already holds.
      dataset: the prepared data (loaded from the config when None).
      return_params: also return each completed trial's final parameters (tests use this).

    Returns:
      ``{"results": [...], "best": {...}, "programs_compiled": n, "wall_time_s": ...,
      "plan": Plan, "trial_epochs": n, ...}``.

    Raises:
      ConfigError: for a bad sweep or config, before anything is compiled.
      jaxnn.run.RunError: when ``workdir`` holds another sweep or a finished one and
        ``resume`` is False, or another process is writing it.
    """
    from jaxnn import run

    started = time.perf_counter()
    run.enable_precision(config)
    workdir = os.fspath(workdir)
    # Processes given two configs (or two directories to resume) would record one sweep's
    # trials as the other's: each must run process 0's.
    processes.same_as_process_0(config_lib.dumps(config), f"{config.source}: the config")
    dataset, plan = planned(config, dataset)
    # With several hosts (jax.distributed), every host computes and the first one writes.
    writer = jax.process_index() == 0
    with contextlib.ExitStack() as held:  # the writer holds the directory's lock throughout
        study, done = processes.together(
            lambda: _open(config, plan, dataset, workdir, resume, held) if writer
            else (None, {}),
            rundir.user_errors())
        # What process 0 read from the directory it alone writes, in every process.
        done = {row["trial"]: row for row in processes.from_process_0(list(done.values()))}
        results_path = os.path.join(workdir, RESULTS)

        def record(rows: list[dict]) -> None:  # results.jsonl first (fsynced), then the study
            if writer:
                jsonl.append(results_path, rows)
                search.record(study, rows, plan.space, plan.metric)

        sweep = Sweep(config, plan, dataset, done, record, return_params)
        sweep.run(study)
        return sweep.summary(workdir if writer else None, study, started)


def planned(config: Config, dataset=None) -> tuple[Any, Plan]:
    """A sweep's data set (``dataset``, else ``config``'s) and plan, the same in every process
    of a distributed sweep: data one host lacks or refuses is refused in every process, and
    so is data that differs from process 0's (each would train on its own); every process
    plans with the smallest host's memory budget.

    Raises:
      ConfigError: for data or a sweep the config cannot take (in one process).
      jaxnn.run.RunError: in every process, for one that refused (naming it).
    """
    from jaxnn import run

    if dataset is None:  # a file missing on one host: refused in every process
        dataset = processes.together(lambda: run.prepare(config), rundir.user_errors())
    budget = host.memory_budget()
    if jax.process_count() > 1:
        processes.same_as_process_0(_described(dataset),
                                    f"{config.source}: data set {dataset.name}")
        # Plans made with two budgets would chunk the trials into other programs, each
        # process waiting for the others' forever.
        budget = min(processes.gathered(budget))
    return dataset, processes.together(lambda: make_plan(config, dataset, budget=budget),
                                       rundir.user_errors())


def _described(dataset) -> str:
    """Each split's shape and dtype, a line each, and a digest of their contents."""
    lines = [f"{name}: {array.shape} {array.dtype}"
             for name, array in zip(dataset._fields[:6], dataset[:6], strict=True)]
    return "\n".join([*lines, f"contents: {dataset.digest()}"])


def _open(config: Config, plan: Plan, dataset, workdir: str, resume: bool,
          held: contextlib.ExitStack) -> tuple[Any, dict]:
    """Process 0's part of starting: locks ``workdir`` (for as long as ``held``), checks it
    (a resumed sweep's data too), writes a new sweep's config and opens the study. Returns
    ``(study, finished trials by index)``."""
    if plan.spec.get("storage"):  # a bad one is refused before the directory is made
        search.configured_storage(plan.spec["storage"], config.source)
    held.enter_context(rundir.locked(workdir))
    done = _start(config, plan, workdir, resume)
    if resume:
        rundir.check_data(workdir, dataset.digest(), f"{config.source}: data: {dataset.name}",
                          "sweep")
    else:
        _write_new(config, workdir, dataset.digest())
    try:
        study = search.open_study(config, plan.spec, workdir, plan.metric, resume,
                                  recorded=bool(done))
    except rundir.RunError:
        if not resume:
            _remove_new(workdir)
        raise
    search.record(study, done.values(), plan.space, plan.metric)
    return study, done


def _same_file(path: str, other: str) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:  # ``other`` no file (a dict's config)
        return False


def _start(config: Config, plan: Plan, workdir: str, resume: bool) -> dict:
    """Checks the sweep directory and returns the finished trials by index (resume)."""
    from jaxnn.run import CONFIG as run_config

    results_path = os.path.join(workdir, RESULTS)
    held = rundir.holds(workdir)
    if held == rundir.SWEEP and not resume and os.path.exists(results_path):
        raise rundir.RunError(f"{workdir} already holds a sweep; continue it with --resume or "
                              "choose another directory")
    if held not in (None, rundir.SWEEP):  # a report's trials are its study's, not a sweep's
        raise rundir.RunError(f"{workdir} holds {held}; a sweep needs another directory")
    if not resume:
        rundir.refuse_overwriting(workdir, (SWEEP_CONFIG, RESULTS, rundir.DATA_DIGEST,
                                            search.STUDY_FILE, *report.WRITTEN), "a new sweep")
    if resume and not os.path.exists(os.path.join(workdir, SWEEP_CONFIG)):
        raise rundir.RunError(f"{workdir}: nothing to resume ({SWEEP_CONFIG} not found)")
    stopped_run = os.path.join(workdir, run_config)  # a run stopped before its first epoch
    if not resume and os.path.exists(stopped_run) and not _same_file(stopped_run,
                                                                     config.source):
        raise rundir.RunError(f"{workdir} holds {run_config} (a training run's config, or "
                              "another config than this sweep's); a sweep needs another "
                              "directory")
    rows = jsonl.repair(results_path) if resume else []
    done = {row["trial"]: row for row in rows}
    if len(done) < len(rows):  # a line copied, or two sweeps' files joined
        seen: set = set()
        twice = next(i for i, row in enumerate(rows)
                     if row["trial"] in seen or seen.add(row["trial"]))
        raise rundir.RunError(f"{results_path}: line {twice + 1} records trial "
                              f"{rows[twice]['trial']} again; the file is damaged, and nothing "
                              "was changed")
    total = len(plan.trials) if plan.search == "grid" else plan.spec["trials"]
    for index, row in done.items():
        if index >= total or (plan.trials and row["values"] != plan.trials[index].values):
            now = (f"gives it {plan.trials[index].values}" if index < len(plan.trials)
                   else "has no such trial")
            raise rundir.RunError(
                f"{results_path}: trial {index} was trained with {row['values']}, and "
                f"{config.source} {now} (an edited config, or another sweep's results); "
                "restore the config, or use another directory")
    return done


def _write_new(config: Config, workdir: str, data_digest: str) -> None:
    """Writes a new sweep's config, data's digest and empty results file before its study is
    made, so that a sweep stopped at any moment leaves a directory ``--resume`` continues (a
    study alone, without its config, could be neither resumed nor replaced)."""
    rundir.write_text(os.path.join(workdir, SWEEP_CONFIG), config_lib.dumps(config))
    rundir.record_data(workdir, data_digest)
    jsonl.rewrite(os.path.join(workdir, RESULTS), [])


def _remove_new(workdir: str) -> None:
    """Takes back what `_write_new` wrote (files `_start` found absent): a sweep refused for
    its study's name leaves nothing a ``--resume`` would continue in the other sweep's
    study."""
    for name in (SWEEP_CONFIG, RESULTS, rundir.DATA_DIGEST):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(workdir, name))


# Draws in a row that no trial can take before an adaptive search gives up (exit 2): a space
# mostly of such values is a mistake, not bad luck.
MAX_REFUSALS = 20


class InFlight:
    """Chunks started (dispatched to the devices) and not yet collected, oldest first: while
    one trains, the host traces and compiles the next (a sweep of several programs overlaps
    one's compiling with another's training). At most as many trials are in flight as fit in
    the memory budget together (`jaxnn.host.memory_budget`), and with several processes one
    chunk at a time. A chunk holds ``bytes_per_chunk`` besides its trials' (the minibatch
    order its trials share)."""

    def __init__(self, bytes_per_trial: int, *, bytes_per_chunk: int = 0):
        self.budget = host.memory_budget() if jax.process_count() == 1 else 0
        self.bytes_per_trial = bytes_per_trial
        self.bytes_per_chunk = bytes_per_chunk
        self.queue: collections.deque = collections.deque()  # (trials, collect, ready)

    def start(self, trials: int, launch: Callable[[], tuple[Callable[[], None],
                                                             Callable[[], bool]]]) -> None:
        """Collects the oldest chunks until ``trials`` more fit, then ``launch()``es them
        (which returns their collecting function and whether they have finished)."""
        while self.queue and self.bytes_per_trial * (
                trials + sum(entry[0] for entry in self.queue)) + self.bytes_per_chunk * (
                len(self.queue) + 1) > self.budget:
            self.queue.popleft()[1]()
        self.queue.append((trials, *launch()))

    def finish_all(self) -> None:
        """Collects every chunk still in flight, oldest first."""
        while self.queue:
            self.queue.popleft()[1]()

    def finish_ready(self) -> None:
        """Collects the chunks that have finished, without waiting for the others: what an
        interrupt (or an error compiling the next) leaves is recorded, as it was before
        chunks were started ahead."""
        for _, collect, ready in list(self.queue):
            if ready():
                collect()
        self.queue.clear()


class Sweep:
    """One sweep's training: its batches, the compiled programs they share, and the rows of
    finished trials, handed to ``record`` (rows -> None) as they finish."""

    def __init__(self, config, plan, dataset, done: dict, record, return_params=False):
        self.config, self.plan, self.dataset = config, plan, dataset
        self.done, self.record = done, record
        # The whole sweep's plan decides the devices; a batch's plan may model otherwise.
        self.mesh = (Mesh(np.array(jax.devices()[:plan.devices]), ("trials",))
                     if plan.devices > 1 else None)
        self.prologue = Prologue(dataset)
        self.programs: dict[tuple, GroupProgram] = {}
        self.params: dict[int, Any] | None = {} if return_params else None
        self.trial_epochs = 0
        self.total = len(plan.trials) if plan.search == "grid" else plan.spec["trials"]
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=len(done), unit="trial",
                        disable=not config.training.progress, leave=False, dynamic_ncols=True)

    def run(self, study) -> None:
        """Trains every unfinished trial: the grid, or the batches a sampler asks for
        (``study``: the sweep's study in process 0, None in the others)."""
        try:
            if self.plan.search == "grid" and "batch" not in self.plan.spec:
                self.train_batch(self.plan)
            elif self.plan.search == "grid":  # in batches of ``batch`` trials, in order
                size, trials = self.plan.spec["batch"], self.plan.trials
                # Drawn at the whole grid's widths, a batch's params need no wider draw later.
                self.prologue.widen([g.config.model for g in self.plan.groups])
                for first in range(0, len(trials), size):
                    # Planned whole, a resumed batch chunks its trials as it did uninterrupted.
                    batch = trials[first:first + size]
                    if any(t.index not in self.done for t in batch):
                        self.train_batch(make_plan(self.config, self.dataset, batch,
                                                   self.plan.budget))
            else:
                self.search(study)
        finally:
            self.bar.close()

    def search(self, study) -> None:
        """Asks the sampler for batches of trials and trains each batch; a resumed sweep
        first reruns the trials its study asked for but never heard back about."""
        size, total = self.plan.spec["batch"], self.total
        asked = search.running(study, self.plan.space) if study is not None else {}
        for first in range(0, total, size):
            indices = range(first, min(first + size, total))
            if all(i in self.done for i in indices):
                continue
            self.train_batch(self.ask_batch(study, indices, asked))

    def ask_batch(self, study, indices: range, asked: dict[int, dict]) -> Plan:
        """The plan of the trials ``indices``: finished ones as they were, the others'
        values from ``asked`` (a resumed study's running trials) or the sampler.

        Values the data or the network cannot take (each range is checked before training at
        its ends and at every value of a short int range, not at every combination:
        GroupNorm(4) after a swept convolution of 93 channels) make a failed trial in the
        study, with the reason (user attribute ``"refused"``) and a line on stderr; the
        sampler is asked again for that trial, the others kept. A trial refused
        `MAX_REFUSALS` times in a row ends the sweep (exit 2), as does an error of the batch
        as a whole (its memory)."""
        kept = {i: self.done[i]["values"] for i in indices if i in self.done}
        refusals = collections.Counter()
        while True:
            values = None
            if study is not None:  # process 0 asks; the others take its answer
                values = [kept.get(i) or asked.pop(i, None)
                          or search.ask(study, self.plan.space, i) for i in indices]
            values = processes.from_process_0(values)
            batch = [make_trial(i, v, self.config) for i, v in zip(indices, values, strict=True)]
            try:
                return make_plan(self.config, self.dataset, batch, self.plan.budget)
            except ConfigError as error:
                refused = self.refused(batch)
                if not refused:
                    raise
                for trial in batch:
                    if trial.index in refused:
                        refusals[trial.index] += 1
                        if study is not None:
                            search.refuse(study, search.by_index(study)[trial.index]._trial_id,
                                          refused[trial.index])
                            self.bar.write(f"jaxnn: refused {refused[trial.index]}; recorded "
                                           "as failed in the study, asking the sampler again",
                                           file=sys.stderr)
                    else:
                        kept[trial.index] = trial.values
                worst = max(refusals.values())
                if worst >= MAX_REFUSALS:
                    raise ConfigError(error.source, error.key, (
                        f"{str(error).split(': ', 2)[-1]} ({worst} draws in a row refused for "
                        "one trial)")) from None

    def refused(self, batch) -> dict[int, str]:
        """The unfinished trials of ``batch`` that the data or the network cannot take, by
        index, with the reason."""
        found = {}
        for trial in batch:
            if trial.index not in self.done:
                try:
                    check_trials(self.config, [trial], self.dataset)
                except ConfigError as error:
                    found[trial.index] = str(error).split(": ", 2)[-1]
        return found

    def program(self, group: Group) -> GroupProgram:
        key = (structure(group.config, pack=False), group.packed_width, group.packed_layers)
        if key not in self.programs:
            self.programs[key] = GroupProgram(group.config, group.packed_width, self.dataset,
                                              self.mesh, self.prologue, group.packed_layers)
        return self.programs[key]

    def emit(self, rows: list[dict]) -> None:
        """Streams finished trials to ``record``."""
        self.record(rows)
        self.done.update({row["trial"]: row for row in rows})
        self.bar.update(len(rows))

    def train_batch(self, plan: Plan) -> None:
        """Trains a batch's unfinished trials in segments between its pruning rungs; at each
        rung, only each bracket's best continue (`jaxnn.sweep.pruning`)."""
        self.prologue.widen([g.config.model for g in plan.groups])
        prune = plan.pruning
        bracket = {t.index: prune.bracket_of(p) for p, t in enumerate(plan.trials)} if prune \
            else {}
        rungs = {b: prune.rungs(b) for b in set(bracket.values())}
        states = {t.index: None for t in plan.trials if t.index not in self.done}
        history: dict[int, dict[str, np.ndarray]] = {}
        start = 0
        for stop in sorted({e for r in rungs.values() for e in r} | {
                g.config.training.epochs for g in plan.groups}):
            running = InFlight(plan.bytes_per_trial, bytes_per_chunk=max(
                order_bytes(group.config, self.dataset) for group in plan.groups))
            try:
                for group in plan.groups:
                    if group.config.training.epochs >= stop:
                        self.segment(group, states, history, start, stop, running)
            except BaseException:
                running.finish_ready()
                raise
            running.finish_all()
            for b, at in rungs.items():
                if stop in at:
                    self.rung(plan, [t for t in plan.trials if bracket[t.index] == b], stop,
                              states, history)
            start = stop

    def segment(self, group: Group, states: dict, history: dict, start: int, stop: int,
                running: InFlight) -> None:
        """Trains the group's active trials from ``start`` to ``stop`` epochs, in as few
        chunks as its chunk size allows, each started in ``running``; emits the rows of
        trials that finish or diverge as their chunk is collected."""
        members = [t for t in group.trials if t.index in states]
        if not members:
            return
        program = self.program(group)
        final = stop == group.config.training.epochs
        whole = start == 0 and final
        # A whole run (no pruning) chunks the group as an uninterrupted sweep does, counting
        # the trials a resumed sweep finished before: each trial then trains in the same
        # program at the same place, so float32 results do not depend on where it stopped.
        chunked = list(group.trials) if whole else members
        cap = max(len(c) for c in group.chunks)
        count = math.ceil(len(chunked) / cap)
        per_chunk = math.ceil(len(chunked) / count)
        size = math.ceil(per_chunk / self.plan.devices) * self.plan.devices
        if not whole:  # a segment program, whose sizes may be reused
            size = reuse_size(program.segment_sizes(), size, stop - start, group.config,
                              self.dataset.input_shape, self.dataset.output_size,
                              program.trainer.steps_per_epoch, jax.default_backend())
        for offset in range(0, len(chunked), per_chunk):
            part = chunked[offset:offset + per_chunk]
            chunk = [t for t in part if t.index in states]
            if not chunk:
                continue
            # A whole run trains the trials a resumed chunk finished before again, where
            # padding would be, so every trial keeps its place in the program.
            trained = part if whole else chunk

            def launch(trained=trained, chunk=chunk):
                started = program.dispatch(
                    trained, size, [states[t.index] for t in chunk] if start else None,
                    start, stop)
                return functools.partial(self.collect, chunk, [trained.index(t) for t in chunk],
                                         started, states, history, stop - start,
                                         final), started.ready

            running.start(size, launch)

    def collect(self, chunk: list, positions: list[int], started: Started, states: dict,
                history: dict, epochs: int, final: bool) -> None:
        """Waits for a ``started`` chunk (``chunk``'s trials at ``positions`` of it); keeps
        their histories and states, and emits the rows of those that finished (``final``)
        or diverged."""
        whole, rows_of = started.collect(), np.asarray(positions)
        out = Segment({k: v[rows_of] for k, v in whole.metrics.items()},
                      None if whole.test is None else {k: v[rows_of]
                                                       for k, v in whole.test.items()},
                      lambda p: whole.state_of(positions[p]))
        self.trial_epochs += len(chunk) * epochs
        for position, trial in enumerate(chunk):
            past = history.get(trial.index, {})
            history[trial.index] = {name: np.concatenate([past[name], v[position]])
                                    if name in past else v[position]
                                    for name, v in out.metrics.items()}
        metrics = {name: np.stack([history[t.index][name] for t in chunk])
                   for name in out.metrics}
        stopped = [p for p, t in enumerate(chunk)
                   if final or np.any(metrics["nonfinite_step"][p] >= 0)]
        for position, trial in enumerate(chunk):
            if position not in stopped:
                states[trial.index] = out.state_of(position)
        if not stopped:
            return
        rows = result_rows([chunk[p] for p in stopped],
                           {k: v[stopped] for k, v in metrics.items()},
                           {k: v[stopped] for k, v in out.test.items()} if final else None)
        if final and self.params is not None:
            for position in stopped:
                self.params[chunk[position].index] = out.state_of(position).params
        for position in stopped:
            del states[chunk[position].index]
        self.emit(rows)

    def rung(self, plan: Plan, members: list, stop: int, states: dict,
             history: dict) -> None:
        """Prunes the bracket ``members`` at epoch ``stop``: every trial that reached it
        competes (those finished before a resume by their recorded curves)."""
        metric = plan.metric
        values = {}
        for trial in members:
            if trial.index in states:
                values[trial.index] = _finite(history[trial.index][metric][stop - 1])
            elif trial.index in self.done:
                curve = self.done[trial.index]["curves"].get(metric, [])
                if len(curve) >= stop:
                    values[trial.index] = curve[stop - 1]
        keep = pruning.survivors(values, plan.pruning.eta, metric.endswith("accuracy"))
        losers = [t for t in members if t.index in states and t.index not in keep]
        if not losers:
            return
        metrics = {name: np.stack([history[t.index][name] for t in losers])
                   for name in history[losers[0].index]}
        for trial in losers:
            del states[trial.index]
        self.emit(result_rows(losers, metrics, None))

    def summary(self, workdir: str | None, study, started: float) -> dict[str, Any]:
        """The run's figures; with a ``workdir``, the report written there."""
        plan = self.plan
        results = [self.done[i] for i in range(self.total) if i in self.done]
        compiled = sum(len(p.compiled) for p in self.programs.values())
        loaded = sum(p.loaded for p in self.programs.values())
        compile_s = self.prologue.compile_s + sum(p.compile_s for p in self.programs.values())
        if workdir is not None:
            written = report.write(self.config, plan, results, workdir, study)
        else:
            written = {"table": report.table(plan, results), "best": None, "plots": []}
        return {"results": results, "best": written["best"], "table": written["table"],
                "programs_compiled": compiled, "programs_loaded": loaded,
                "compile_time_s": compile_s,
                "wall_time_s": time.perf_counter() - started, "plots": written["plots"],
                "params": self.params, "plan": plan, "trial_epochs": self.trial_epochs,
                "study": study}

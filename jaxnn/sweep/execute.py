"""Running a sweep: the directory (locked), streaming each chunk's rows to
``results.jsonl``, resume, and the report at the end."""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxnn import config as config_lib
from jaxnn import jsonl, rundir
from jaxnn.config import Config
from jaxnn.sweep import report
from jaxnn.sweep.plan import Plan, make_plan
from jaxnn.sweep.programs import GroupProgram, Prologue

RESULTS = "results.jsonl"


SWEEP_CONFIG = "sweep.toml"


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


def result_rows(chunk_trials, metrics, test_metrics) -> list[dict]:
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
    results_path = os.path.join(workdir, RESULTS)
    mesh = Mesh(np.array(jax.devices()), ("trials",)) if plan.devices > 1 else None
    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan.trials), initial=len(done), unit="trial",
               disable=not config.training.progress, leave=False, dynamic_ncols=True)
    compiled, compile_s, params_out = 0, 0.0, {}
    prologue = Prologue(plan, dataset)
    try:
        for group in plan.groups:
            todo = [c for c in group.chunks if not all(i in done for i in c)]
            if not todo:
                continue
            program = GroupProgram(group, dataset, mesh, prologue)
            size = math.ceil(max(len(c) for c in group.chunks) / plan.devices) * plan.devices
            for chunk in todo:
                chunk_trials = [plan.trials[i] for i in chunk]
                (metrics, test_metrics), params_of = program(chunk_trials, size)
                rows = result_rows(chunk_trials, metrics, test_metrics)
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
    written = report.write(config, plan, results, workdir) if writer else {
        "table": report.table(plan, results), "best": None, "plots": []}
    summary = {"results": results, "best": written["best"], "table": written["table"],
               "programs_compiled": compiled, "compile_time_s": compile_s,
               "wall_time_s": time.perf_counter() - started, "plots": written["plots"],
               "params": params_out if return_params else None, "plan": plan}
    return summary

"""Hyperparameter sweeps as few compiled programs as possible.

A ``[sweep]`` section lists the values to try::

    [sweep]
    grid = {learning_rate = [0.01, 0.1, 1.0], width = [32, 128]}
    random = {momentum = {distribution = "uniform", low = 0.5, high = 0.99}}
    count = 4        # random draws per grid point
    seed = 0         # seeds the random draws
    pack_widths = "auto"

Names are the numeric hyperparameters (`NUMERIC`: learning rate, momentum, weight decay,
Adam's b1, dropout, init scale, seed), the structural ones (`STRUCTURAL`: width, depth, activation,
batch size, optimizer, schedule), any config key as "section.key" or a layer's argument as
"model.layers[i].key" (nested: "model.layers[i].layers[j].key").

Planning groups the trials by compiled structure: everything but the numeric
hyperparameters. Inside a group the numeric ones are array leaves, vmapped in one program,
and the trial axis is sharded over every device. With ``pack_widths``, trials that differ
only in hidden width share a program: hidden layers are padded to the program's widest and
the extra units masked (`packing.masked_network`); "auto" splits the widths into programs
by a cost model. Every trial starts from the parameters it would draw alone (zero-padded
when packed); as the initializers are shape-stable, those come from one draw at the sweep's
widest widths, cropped and rescaled. Trials of a ``model.layers`` CNN that differ only in
the features of Dense or Conv layers ("model.layers[i].features") are packed the same way
(`channels`), each drawing its own params, zero-padded. That draw and the epochs' minibatch
orders are made by a small program run once per chunk, so the training programs compile no
random-number code (dropout's keys aside).
Trials run in chunks that fit device memory; each chunk's results are appended to
``results.jsonl`` (flushed and fsynced), so a killed sweep resumed with ``resume=True``
reruns only unfinished trials and ends with the same table.

``search = "random" | "tpe" | "cmaes" | "gp"`` asks an Optuna sampler for ``trials`` trials,
``batch`` at a time (a grid with ``batch`` trains in batches of that size, in order); each
batch is planned and trained like a grid, and later batches reuse the compiled programs
(packed widths are padded to a few sizes). Every sweep is an Optuna study (`search`); many
worker processes can share one (`workers`). ``[sweep.pruning]`` stops losing trials at
rungs (`pruning`): the batch trains in segments between rungs, survivors continuing from
their exact state.

Modules, one concern each: `spec` (the ``[sweep]`` section, its search space and trials),
`plan` (programs and chunks), `cost` (the planner's cost model: compile seconds, step
FLOPs), `packing` (widths sharing a program), `channels` (channel counts of
``model.layers`` sharing a program), `programs`
(the compiled programs), `pruning` (rungs, brackets, survivors), `search` (the Optuna study
and samplers), `execute` (running, streaming, resume), `report` (table, CSV, best config,
plots) and `workers` (many processes on one shared study). This module only re-exports.
"""

from jaxnn.sweep.cost import (
    COMPILE_SCALE,
    CPU_COMPILE_SECONDS,
    FLOPS_PER_SECOND,
    compile_seconds,
    step_flops,
)
from jaxnn.sweep.execute import RESULTS, SWEEP_CONFIG, read_results, run_sweep
from jaxnn.sweep.packing import trial_params_unpadded
from jaxnn.sweep.plan import Group, Plan, make_plan
from jaxnn.sweep.programs import compiler_options
from jaxnn.sweep.pruning import Pruning
from jaxnn.sweep.report import best_config, param_counts, rank, swept_names, table, write_csv
from jaxnn.sweep.search import STUDY_FILE
from jaxnn.sweep.spec import NUMERIC, SEARCHES, SPEC_KEYS, STRUCTURAL, Trial, make_trial, trials
from jaxnn.sweep.workers import run_worker, write_report

__all__ = [
    "COMPILE_SCALE", "CPU_COMPILE_SECONDS", "FLOPS_PER_SECOND", "NUMERIC", "RESULTS",
    "SEARCHES", "SPEC_KEYS", "STRUCTURAL", "STUDY_FILE", "SWEEP_CONFIG", "Group", "Plan",
    "Pruning", "Trial", "best_config", "compile_seconds", "compiler_options", "make_plan",
    "make_trial", "param_counts", "rank", "read_results", "run_sweep", "run_worker",
    "step_flops", "swept_names", "table", "trial_params_unpadded", "trials", "write_csv",
    "write_report",
]

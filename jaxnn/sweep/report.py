"""The end of a sweep: ranking, the results table and CSV, ``best.toml`` and the plots."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Any

from jaxnn import config as config_lib
from jaxnn import optim, plots, rundir
from jaxnn._table import format_table
from jaxnn.config import Config
from jaxnn.summary import param_count
from jaxnn.sweep.packing import own_param_shapes
from jaxnn.sweep.plan import Plan
from jaxnn.sweep.spec import make_trial


def param_counts(plan: Plan, dataset) -> dict[int, int]:
    """Each trial's own parameter count (for reports)."""
    return {t.index: param_count(own_param_shapes(t, dataset)) for t in plan.trials}


def best_config(plan: Plan, results: list[dict]) -> Config | None:
    """The winning trial's config (sweep section removed), or None if no trial completed."""
    ranked = rank(plan, results)
    if not ranked or ranked[0]["status"] != "completed":
        return None
    best = make_trial(ranked[0]["trial"], ranked[0]["values"], plan.config).config
    # A swept momentum beside a swept optimizer: what the winner did not read is left out.
    optimizer, schedule = optim.read_only(best.optimizer, best.schedule)
    return dataclasses.replace(best, sweep={}, optimizer=optimizer, schedule=schedule)


# What `write` writes besides its figures.
WRITTEN = ("results.csv", "table.txt", "best.toml")


def rank(plan: Plan, results: list[dict]) -> list[dict]:
    """Results sorted best first by the plan's metric: completed trials, then pruned ones
    (the longest trained first), then diverged ones. Completed trials rank by the metric
    alone, whatever epochs each trained (a swept ``training.epochs`` put the longest first)."""
    higher = plan.metric.endswith("accuracy")

    def key(row):
        value = row.get(plan.metric)
        order = {"completed": 0, "pruned": 1}.get(row["status"], 2)
        if value is None or order == 2:
            return (2, 0, 0.0, row["trial"])
        trained = -row.get("epochs", 0) if order == 1 else 0
        return (order, trained, -value if higher else value, row["trial"])

    return sorted(results, key=key)


def swept_names(plan: Plan) -> list[str]:
    """The swept hyperparameters' names, in the order the sweep names them."""
    return list(plan.space)


def status(row: dict) -> str:
    """``completed``, ``pruned @ epoch n`` or ``diverged @ step n``."""
    if row["status"] == "pruned":
        return f"pruned @ epoch {row['epochs']}"
    if row["diverged_step"] is not None:
        return f"diverged @ step {row['diverged_step']}"
    return row["status"]


def table(plan: Plan, results: list[dict]) -> str:
    """The printed results table, best first."""
    names = swept_names(plan)
    header = ["trial", *names, "epochs", "train_loss", "val_loss", "val_acc", "test_loss",
              "test_acc", "status"]

    def fmt(value, digits=4):
        return "-" if value is None else f"{value:.{digits}g}" if isinstance(value, float) \
            else str(value)

    rows = [[row["trial"], *[fmt(row["values"].get(n)) for n in names],
             row.get("epochs", "-"),
             fmt(row.get("train_loss")), fmt(row.get("val_loss")), fmt(row.get("val_accuracy")),
             fmt(row.get("test_loss")), fmt(row.get("test_accuracy")), status(row)]
            for row in rank(plan, results)]
    return format_table(header, rows)


def write_csv(path: str, plan: Plan, results: list[dict]) -> None:
    """The results as CSV, best first."""
    names = swept_names(plan)
    fields = ["trial", *names, "epochs", "train_loss", "train_accuracy", "val_loss",
              "val_accuracy", "test_loss", "test_accuracy", "status", "diverged_step"]
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(fields)
    for row in rank(plan, results):
        writer.writerow([row["trial"], *[row["values"].get(n) for n in names],
                         *[row.get(f) for f in fields[1 + len(names):]]])
    rundir.write_text(path, handle.getvalue())


def write(config, plan, results: list[dict], workdir: str, study=None) -> dict[str, Any]:
    """Writes ``results.csv``, ``table.txt``, ``best.toml`` and the figures (with a
    ``study``, also Optuna's plots of the search).

    Returns:
      ``{"table": str, "best": row or None, "plots": [paths]}``.
    """
    text = table(plan, results)
    rundir.write_text(os.path.join(workdir, "table.txt"), text + "\n")
    write_csv(os.path.join(workdir, "results.csv"), plan, results)
    best = best_config(plan, results)
    best_row = rank(plan, results)[0] if best is not None else None
    if best is not None:
        rundir.write_text(os.path.join(workdir, "best.toml"),
                          f"# Best of {len(results)} trials by {plan.metric}: trial "
                          f"{best_row['trial']} {best_row['values']}\n" + config_lib.dumps(best))
    figures = []
    if config.output.plots:
        figures = figures_for(plan, results, workdir)
        if study is not None and (plan.search != "grid" or plan.pruning is not None):
            figures += search_figures(study, plan, workdir)
    return {"table": text, "best": best_row, "plots": figures}


def figures_for(plan, results: list[dict], workdir: str) -> list[str]:
    """Metric against learning rate per width, the rate x width heatmap, top loss curves."""
    metric = plan.metric
    swept = swept_names(plan)
    written = []
    if "learning_rate" in swept:
        others = ["width"] if "width" in swept else [n for n in swept if n != "learning_rate"]
        written.append(plots.metric_vs(results, "learning_rate", metric,
                                       os.path.join(workdir, "metric_vs_lr.png"), series=others))
    if {"learning_rate", "width"} <= set(swept):
        written.append(plots.heatmap(results, "width", "learning_rate", metric,
                                     os.path.join(workdir, "heatmap_lr_width.png")))
    top = [r for r in rank(plan, results) if r["status"] == "completed"][:5]
    if top:
        written.append(plots.curves(top, "val_loss" if "val_loss" in top[0]["curves"]
                                    else "train_loss", os.path.join(workdir, "top_curves.png"),
                                    label_keys=swept, title="top trials"))
    return written


def search_figures(study, plan: Plan, workdir: str) -> list[str]:
    """Optuna's matplotlib plots of the study: the optimization history, the parallel
    coordinates of the params, their importances (with two params or more) and, for a pruned
    sweep, every trial's intermediate values."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    plt = plots.pyplot()
    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]
    wanted = []
    if complete:
        wanted += [("search_history.png", optuna_plots.plot_optimization_history),
                   ("search_parallel_coordinates.png", optuna_plots.plot_parallel_coordinate)]
    if len(complete) >= 2 and len(plan.space) >= 2:
        wanted.append(("search_importances.png", optuna_plots.plot_param_importances))
    if plan.pruning is not None:
        wanted.append(("search_intermediate_values.png", optuna_plots.plot_intermediate_values))
    written = []
    for name, draw in wanted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks these plots experimental
            axes = draw(study)
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(8, 5)
        try:
            written.append(rundir.save_figure(figure, os.path.join(workdir, name), dpi=100,
                                              bbox_inches="tight"))
        finally:
            plt.close(figure)
    return written

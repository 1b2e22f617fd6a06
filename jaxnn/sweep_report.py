"""The end of a sweep: the results table and CSV, ``best.toml`` and the plots."""

from __future__ import annotations

import os
from typing import Any

from jaxnn import config as config_lib
from jaxnn import plots


def write(config, plan, results: list[dict], workdir: str) -> dict[str, Any]:
    """Writes ``results.csv``, ``table.txt``, ``best.toml`` and the figures.

    Returns:
      ``{"table": str, "best": row or None, "plots": [paths]}``.
    """
    from jaxnn import sweep

    text = sweep.table(plan, results)
    with open(os.path.join(workdir, "table.txt"), "w") as handle:
        handle.write(text + "\n")
    sweep.write_csv(os.path.join(workdir, "results.csv"), plan, results)
    best = sweep.best_config(plan, results)
    best_row = sweep.rank(plan, results)[0] if best is not None else None
    if best is not None:
        with open(os.path.join(workdir, "best.toml"), "w") as handle:
            handle.write(f"# Best of {len(results)} trials by {plan.metric}: trial "
                         f"{best_row['trial']} {best_row['values']}\n")
            handle.write(config_lib.dumps(best))
    figures = figures_for(plan, results, workdir) if config.output.plots else []
    return {"table": text, "best": best_row, "plots": figures}


def figures_for(plan, results: list[dict], workdir: str) -> list[str]:
    """Metric against learning rate per width, the rate x width heatmap, top loss curves."""
    from jaxnn import sweep

    metric = plan.metric
    swept = sweep.swept_names(plan)
    written = []
    if "learning_rate" in swept:
        others = ["width"] if "width" in swept else [n for n in swept if n != "learning_rate"]
        written.append(plots.metric_vs(results, "learning_rate", metric,
                                       os.path.join(workdir, "metric_vs_lr.png"), series=others))
    if {"learning_rate", "width"} <= set(swept):
        written.append(plots.heatmap(results, "width", "learning_rate", metric,
                                     os.path.join(workdir, "heatmap_lr_width.png")))
    top = [r for r in sweep.rank(plan, results) if r["status"] == "completed"][:5]
    if top:
        written.append(plots.curves(top, "val_loss" if "val_loss" in top[0]["curves"]
                                    else "train_loss", os.path.join(workdir, "top_curves.png"),
                                    label_keys=swept, title="top trials"))
    return written

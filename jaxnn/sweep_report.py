"""The end of a sweep: the results table and CSV, ``best.toml`` and the plots."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from jaxnn import config as config_lib
from jaxnn import plots


def write(config, plan, results: list[dict], workdir: str) -> dict[str, Any]:
    """Writes ``results.csv``, ``table.txt``, ``best.toml`` and the figures.

    Returns:
      ``{"table": str, "best": row or None, "plots": [paths] or a note}``.
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


def _series_key(values: dict, skip: str) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items() if k != skip) or "all"


def figures_for(plan, results: list[dict], workdir: str) -> list[str] | str:
    """Metric against learning rate per width, the rate x width heatmap, top loss curves."""
    plt = plots.pyplot()
    if plt is None:
        return plots.MISSING
    written = []
    metric = plan.metric
    swept = {name for t in plan.trials for name in t.values}

    if "learning_rate" in swept:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        series: dict[str, list] = {}
        for row in results:
            key = f"width={row['values']['width']}" if "width" in swept else \
                _series_key(row["values"], "learning_rate")
            series.setdefault(key, []).append(row)
        for key, rows in series.items():
            rows = sorted(rows, key=lambda r: r["values"]["learning_rate"])
            lrs = [r["values"]["learning_rate"] for r in rows]
            ys = [r.get(metric) if r.get(metric) is not None else np.nan for r in rows]
            line, = ax.plot(lrs, ys, marker="o", label=key)
            diverged = [lr for lr, r in zip(lrs, rows, strict=True) if r["status"] != "completed"]
            if diverged:
                finite = [y for y in ys if not math.isnan(y)]
                ax.plot(diverged, [min(finite) if finite else 0] * len(diverged), "x",
                        color=line.get_color(), markersize=9)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{metric.replace('_', ' ')} by learning rate (x: diverged)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, plt, workdir, "metric_vs_lr.png"))

    if {"learning_rate", "width"} <= swept:
        lrs = sorted({r["values"]["learning_rate"] for r in results})
        widths = sorted({r["values"]["width"] for r in results})
        grid = np.full((len(widths), len(lrs)), np.nan)
        for row in results:
            value = row.get(metric)
            if value is not None:
                grid[widths.index(row["values"]["width"]),
                     lrs.index(row["values"]["learning_rate"])] = value
        fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(lrs), 1.2 + 0.6 * len(widths)))
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis")
        ax.set_xticks(range(len(lrs)), [f"{v:.3g}" for v in lrs], rotation=45)
        ax.set_yticks(range(len(widths)), [str(w) for w in widths])
        ax.set_xlabel("learning rate")
        ax.set_ylabel("width")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, "diverged" if math.isnan(value) else f"{value:.3f}", ha="center",
                    va="center", fontsize=7, color="black" if math.isnan(value) else "white")
        fig.colorbar(image, ax=ax, label=metric.replace("_", " "))
        fig.tight_layout()
        written.append(_save(fig, plt, workdir, "heatmap_lr_width.png"))

    from jaxnn import sweep

    top = [r for r in sweep.rank(plan, results) if r["status"] == "completed"][:5]
    if top:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for row in top:
            curve = row["curves"].get("val_loss") or row["curves"]["train_loss"]
            ax.plot(range(1, len(curve) + 1), curve,
                    label=f"#{row['trial']} {_series_key(row['values'], '')}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation loss")
        ax.set_title("top trials")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, plt, workdir, "top_curves.png"))
    return written


def _save(fig, plt, workdir, name):
    path = os.path.join(workdir, name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

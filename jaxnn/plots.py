"""Figures with matplotlib (a dependency), drawn on the non-interactive Agg backend."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from jaxnn import rundir


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use: it is
    slow to import and most commands draw nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(rows: Sequence[dict], workdir: str) -> list[str]:
    """Writes ``loss.png`` and ``accuracy.png`` from per-epoch metrics rows.

    Returns:
      The files written (none when no epoch ran; no accuracy figure without accuracies).
    """
    if not rows:
        return []
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    written = []
    for metric, label in (("loss", "loss"), ("accuracy", "accuracy")):
        # Absent or not finite (a diverged epoch): a gap in the line.
        series = {split: _plottable([r.get(f"{split}_{metric}") for r in rows])
                  for split in ("train", "val")}
        series = {split: values for split, values in series.items()
                  if any(math.isfinite(v) for v in values)}
        if not series:  # a regression's accuracy: no figure (it was an empty one)
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for split, values in series.items():
            ax.plot(epochs, values, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if metric == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(save(fig, plt, os.path.join(workdir, f"{metric}.png")))
    return written


# Beyond any float32 value: on a log axis matplotlib overflowed (an OverflowError near 1e290)
# drawing a float64 run's diverging loss.
_LARGEST = float(np.finfo(np.float32).max)


def _plottable(values: Sequence[float | None]) -> list[float]:
    """``values`` with None, non-finite and beyond-float32 ones as NaN: gaps in a line."""
    return [v if v is not None and math.isfinite(v) and abs(v) <= _LARGEST else math.nan
            for v in values]


# --- sweep figures: each takes result rows ({"values": {...}, metric: ..., "curves": {...}})

def _label(values: dict, keys: Sequence[str]) -> str:
    """``"k=v, ..."`` for the scalar values among ``keys`` (lists of layers are left out)."""
    return ", ".join(f"{k}={values[k]:.3g}" if isinstance(values[k], float) else
                     f"{k}={values[k]}" for k in keys
                     if k in values and not isinstance(values[k], list | dict)) or "all"


def save(fig, plt, path: str) -> str:
    """Writes ``fig`` to ``path`` whole (a full disk leaves the earlier figure, not an empty
    file) and closes it; returns ``path``."""
    fig.tight_layout()
    try:
        return rundir.save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def _keyed(title: str, keys: Sequence[str]) -> str:
    """``title`` with the key to the figure's marks, which a given title kept out."""
    return title + (f" ({', '.join(keys)})" if keys else "")


def metric_vs(rows: Sequence[dict], x: str, metric: str, path: str, *,
              series: Sequence[str] = (), log_x: bool = True, title: str = "") -> str:
    """``metric`` against hyperparameter ``x``, one line per value of the ``series`` keys,
    through the completed trials; diverged trials are marked with crosses at the bottom of
    the axis, pruned ones with triangles at their metric when pruned (an earlier epoch's)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(_label(row["values"], series), []).append(row)
    finite = [v for v in _plottable([r.get(metric) for r in rows]) if math.isfinite(v)]
    floor = min(finite) if finite else 0.0
    for label, members in groups.items():
        members = sorted(members, key=lambda r: r["values"][x])
        xs = [r["values"][x] for r in members]
        ys = _plottable([r.get(metric) for r in members])
        # Every x first (the order of categorical ones), nothing drawn: the group's colour.
        (line,) = ax.plot(xs, [math.nan] * len(xs), marker="o", label=label)
        done = [(v, y) for v, y, r in zip(xs, ys, members, strict=True)
                if r["status"] == "completed"]
        if done:  # one line through the completed trials, unbroken by the others
            ax.plot(*zip(*done, strict=True), marker="o", color=line.get_color())
        for status, marker in (("pruned", "v"), ("diverged", "x")):
            # A pruned trial at its metric when pruned (none for a test metric: at the floor).
            points = [(v, y if status == "pruned" and math.isfinite(y) else floor)
                      for v, y, r in zip(xs, ys, members, strict=True) if r["status"] == status]
            if points:
                ax.plot(*zip(*points, strict=True), marker, color=line.get_color(),
                        markersize=9, fillstyle="none")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(metric.replace("_", " "))
    drawn = {r["status"] for r in rows}
    ax.set_title(_keyed(title or f"{metric.replace('_', ' ')} by {x.replace('_', ' ')}", [
        key for status, key in (("diverged", "x: diverged"), ("pruned", "v: pruned"))
        if status in drawn]))
    ax.grid(alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    return save(fig, plt, path)


def heatmap(rows: Sequence[dict], row_key: str, col_key: str, metric: str, path: str, *,
            notes: dict | None = None, title: str = "") -> str:
    """``metric`` over a grid of two hyperparameters (mean over any other keys' trials
    that have it); cells of diverged trials read "diverged", cells without a trial (an
    adaptive search's) stay blank, a cell holding a pruned trial (its metric an earlier
    epoch's) is starred and one whose mean leaves out a diverged trial daggered;
    ``notes[(row, col)]`` adds a second line to a cell."""
    plt = pyplot()
    row_values = sorted({r["values"][row_key] for r in rows})
    col_values = sorted({r["values"][col_key] for r in rows})
    cells: dict[tuple, list[float]] = {}
    starred = set()
    for r in rows:
        key = (r["values"][row_key], r["values"][col_key])
        cells.setdefault(key, []).append(r[metric] if r.get(metric) is not None else np.nan)
        if r["status"] == "pruned":
            starred.add(key)
    grid = np.full((len(row_values), len(col_values)), np.nan)
    daggered = set()
    for (rv, cv), values in cells.items():
        finite = [v for v in values if not np.isnan(v)]
        if finite:  # one diverged seed hid the others' values
            grid[row_values.index(rv), col_values.index(cv)] = np.mean(finite)
            if len(finite) < len(values):
                daggered.add((rv, cv))
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(col_values), 1.4 + 0.55 * len(row_values)))
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xticks(range(len(col_values)), [f"{v:.3g}" if isinstance(v, float) else str(v)
                                           for v in col_values], rotation=45)
    ax.set_yticks(range(len(row_values)), [str(v) for v in row_values])
    ax.set_xlabel(col_key.replace("_", " "))
    ax.set_ylabel(row_key.replace("_", " "))
    for (i, j), value in np.ndenumerate(grid):
        key = (row_values[i], col_values[j])
        if key not in cells:
            continue
        if np.isnan(value):  # no value: a test metric of a pruned trial, or diverged
            text = "pruned" if key in starred else "diverged"
        else:
            text = f"{value:.3f}" + ("*" if key in starred else "") + (
                "\u2020" if key in daggered else "")
        note = (notes or {}).get((row_values[i], col_values[j]))
        ax.text(j, i, text + (f"\n{note}" if note else ""), ha="center", va="center",
                fontsize=7, color="black" if np.isnan(value) else "white")
    fig.colorbar(image, ax=ax, label=metric.replace("_", " "))
    keys = [*(["*: pruned early"] if starred else []),
            *(["\u2020: some diverged"] if daggered else [])]
    ax.set_title(_keyed(title or metric.replace("_", " "), keys))
    return save(fig, plt, path)


def curves(rows: Sequence[dict], metric: str, path: str, *, label_keys: Sequence[str] = (),
           log_y: bool = True, title: str = "") -> str:
    """Per-epoch ``metric`` curves (e.g. "train_loss", "val_loss") of the given trials."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row in rows:
        curve = row["curves"].get(metric)
        if not curve:
            continue
        curve = _plottable(curve)
        suffix = {"completed": "", "pruned": " (pruned)"}.get(row["status"], " (diverged)")
        ax.plot(range(1, len(curve) + 1), curve,
                label=f"{_label(row['values'], label_keys)}{suffix}")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title or metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, plt, path)


def bars(labels: Sequence[str], values: Sequence[float], path: str, *, ylabel: str,
         title: str = "", log_y: bool = False) -> str:
    """A bar chart (e.g. best accuracy per optimizer)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.5 + 1.3 * len(labels), 4.5))
    ax.bar(range(len(labels)), values, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    if log_y:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return save(fig, plt, path)

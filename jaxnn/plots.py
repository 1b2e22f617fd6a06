"""Figures with matplotlib (the ``plot`` extra); without it, a note instead of a crash."""

from __future__ import annotations

import os
from collections.abc import Sequence

MISSING = "matplotlib is not installed: pip install 'jaxnn[plot]' to get figures"


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or None when not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(rows: Sequence[dict], workdir: str) -> list[str] | str:
    """Writes ``loss.png`` and ``accuracy.png`` from per-epoch metrics rows.

    Returns:
      The files written, or a note saying why there are none.
    """
    plt = pyplot()
    if plt is None:
        return MISSING
    if not rows:
        return "no epochs to plot"
    epochs = [r["epoch"] for r in rows]
    written = []
    for metric, label in (("loss", "loss"), ("accuracy", "accuracy")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for split in ("train", "val"):
            values = [r.get(f"{split}_{metric}") for r in rows]
            if all(v is not None and v == v for v in values):  # skip absent / NaN series
                ax.plot(epochs, values, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if metric == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(workdir, f"{metric}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written

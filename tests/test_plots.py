"""The sweep figures: what each draws for completed, pruned, diverged and missing trials."""

import math

import pytest

from jaxnn import plots


def _row(lr, width, status, accuracy, loss_curve):
    return {"values": {"learning_rate": lr, "width": width}, "status": status,
            "val_accuracy": accuracy, "val_loss": loss_curve[-1] if loss_curve else None,
            "curves": {"val_loss": loss_curve}}


ROWS = [_row(0.1, 4, "completed", 0.9, [1.0, 0.5]), _row(0.3, 4, "pruned", 0.5, [0.8]),
        _row(1.0, 8, "diverged", None, [float("nan")])]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the helpers save, kept open to be read."""
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, plt, path: figures.append(fig) or path)
    yield figures
    for fig in figures:
        plots.pyplot().close(fig)


def test_heatmap_cells_say_what_their_trials_did(drawn, tmp_path):
    """An adaptive search leaves most cells without a trial: they read "diverged" (176 of
    192 in a 16-trial search). A pruned trial's metric is an earlier epoch's: starred."""
    plots.heatmap(ROWS, "width", "learning_rate", "val_accuracy", str(tmp_path / "h.png"))
    texts = sorted(t.get_text() for t in drawn[0].axes[0].texts)
    assert texts == ["0.500*", "0.900", "diverged"]
    assert "(*: pruned early)" in drawn[0].axes[0].get_title()


def test_metric_vs_draws_pruned_trials_apart_from_the_line(drawn, tmp_path):
    """Pruned trials were crossed as diverged and joined into the line of final metrics."""
    plots.metric_vs(ROWS, "learning_rate", "val_accuracy", str(tmp_path / "m.png"))
    ax = drawn[0].axes[0]
    line, *marks = ax.get_lines()
    assert [y if not math.isnan(y) else None for y in line.get_ydata()] == [0.9, None, None]
    assert {m.get_marker(): list(m.get_xdata()) for m in marks} == {"v": [0.3], "x": [1.0]}
    assert ax.get_title().endswith("(x: diverged, v: pruned)")


def test_huge_finite_losses_are_gaps_not_an_overflow(tmp_path):
    """A float64 loss near 1e290 overflowed matplotlib's log axis (an OverflowError ended
    the sweep's report and `jaxnn train` before their closing lines)."""
    rows = [_row(0.1, 4, "completed", 0.9, [1.0, 1e290])]
    plots.curves(rows, "val_loss", str(tmp_path / "c.png"))
    plots.metric_vs(rows, "learning_rate", "val_loss", str(tmp_path / "m.png"))
    written = plots.training_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": 1e290},
                                     {"epoch": 2, "train_loss": 1e300, "val_loss": 2.0}],
                                    str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in written] == ["loss.png"]

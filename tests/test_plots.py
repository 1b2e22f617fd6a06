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
    """Pruned trials were crossed as diverged and joined into the line of final metrics;
    the line runs through the completed trials unbroken by the pruned one between them."""
    rows = [*ROWS, _row(3.0, 4, "completed", 0.7, [0.6])]
    plots.metric_vs(rows, "learning_rate", "val_accuracy", str(tmp_path / "m.png"))
    ax = drawn[0].axes[0]
    drawn_lines = [(line.get_marker(), list(line.get_xdata()), list(line.get_ydata()))
                   for line in ax.get_lines()
                   if any(not math.isnan(y) for y in line.get_ydata())]
    assert drawn_lines == [("o", [0.1, 3.0], [0.9, 0.7]), ("v", [0.3], [0.5]),
                           ("x", [1.0], [0.5])]
    assert ax.get_title().endswith("(x: diverged, v: pruned)")
    # A title given keeps the key to the marks (it was dropped); a mark not drawn has none.
    plots.metric_vs(rows, "learning_rate", "val_accuracy", str(tmp_path / "m.png"),
                    title="accuracy")
    plots.heatmap(ROWS, "width", "learning_rate", "val_accuracy", str(tmp_path / "h.png"),
                  title="accuracy")
    plots.metric_vs(ROWS[:1], "learning_rate", "val_accuracy", str(tmp_path / "m.png"))
    assert [figure.axes[0].get_title() for figure in drawn[1:]] == [
        "accuracy (x: diverged, v: pruned)", "accuracy (*: pruned early)",
        "val accuracy by learning rate"]


def test_a_pruned_trial_without_a_test_metric_reads_pruned(drawn, tmp_path):
    """A pruned trial has no test metrics: its heatmap cell read "diverged"."""
    rows = [{**ROWS[1], "test_accuracy": None}, {**ROWS[0], "test_accuracy": 0.8}]
    plots.heatmap(rows, "width", "learning_rate", "test_accuracy", str(tmp_path / "h.png"))
    assert sorted(t.get_text() for t in drawn[0].axes[0].texts) == ["0.800", "pruned"]


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


def test_a_heatmap_cell_with_one_diverged_trial_keeps_the_others_mean(drawn, tmp_path):
    """The cell's mean was NaN, "diverged", for one diverged seed among completed ones."""
    rows = [ROWS[0], {**ROWS[2], "values": {"learning_rate": 0.1, "width": 4}},
            {**ROWS[0], "val_accuracy": 0.7}]
    plots.heatmap(rows, "width", "learning_rate", "val_accuracy", str(tmp_path / "h.png"))
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.800\u2020"]
    assert ax.get_title() == "val accuracy (\u2020: some diverged)"

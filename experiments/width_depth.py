"""Hidden width (8 ... 1024) x depth (1 ... 6 hidden layers), one sweep, on digits.

Writes results/width_depth/: results.md, heatmap_accuracy.png (parameter counts in the
cells), accuracy_vs_params.png.
"""

from jaxnn import experiment, plots, sweep
from jaxnn._table import counted

QUICK = ["sweep.grid.width=[8, 64]", "sweep.grid.depth=[1, 3]", "training.epochs=3",
         "data.limit=500"]


def main(argv=None):
    exp = experiment.start("width_depth", __doc__, quick=QUICK, argv=argv,
                           reads=["width", "depth"])
    result = exp.sweep()
    rows, plan = result["results"], result["plan"]
    counts = sweep.param_counts(plan, exp.dataset)
    for row in rows:
        row["values"]["params"] = counts[row["trial"]]
    notes = {(r["values"]["width"], r["values"]["depth"]): f"{counts[r['trial']]:,}" for r in rows}
    exp.figure(plots.heatmap(rows, "width", "depth", "test_accuracy",
                             exp.path("heatmap_accuracy.png"), notes=notes,
                             title="test accuracy (parameters)"))
    exp.figure(plots.metric_vs(rows, "params", "test_accuracy",
                               exp.path("accuracy_vs_params.png"), series=["depth"],
                               title="test accuracy by parameter count"))
    best = result["best"]
    headline = (f"Best: width {best['values']['width']}, depth {best['values']['depth']} "
                f"({best['values']['params']:,} parameters): test accuracy "
                f"{best['test_accuracy']:.4f}; {len(rows)} trials in "
                f"{counted(result['programs_compiled'], 'compiled program')}.")
    return exp.finish(headline, [("Results", *experiment.result_rows(
        result, ["width", "depth", "params"]))])


if __name__ == "__main__":
    main()

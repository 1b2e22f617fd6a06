"""Batch size x learning rate on digits, same number of epochs.

Larger batches take fewer steps per epoch and want larger rates. Writes
results/batch_size/: results.md, heatmap.png, accuracy_vs_lr.png.
"""

from jaxnn import experiment, plots, sweep

QUICK = ["sweep.grid.batch_size=[16, 128]", "sweep.grid.learning_rate=[0.01, 0.3]",
         "training.epochs=3", "data.limit=500"]


def main(argv=None):
    exp = experiment.start("batch_size", __doc__, quick=QUICK, argv=argv,
                           reads=["batch_size", "learning_rate"])
    result = exp.sweep()
    rows = result["results"]
    exp.figure(plots.heatmap(rows, "batch_size", "learning_rate", "test_accuracy",
                             exp.path("heatmap.png"), title="test accuracy"))
    exp.figure(plots.metric_vs(rows, "learning_rate", "test_accuracy",
                               exp.path("accuracy_vs_lr.png"), series=["batch_size"]))
    best_rate = {}
    for row in sweep.rank(result["plan"], rows):
        best_rate.setdefault(row["values"]["batch_size"], row)
    headline = "Best rate per batch size: " + ", ".join(
        f"{b}: lr {r['values']['learning_rate']:g} (test {r['test_accuracy']:.4f})"
        for b, r in sorted(best_rate.items())) + "."
    return exp.finish(headline, [("Results", *experiment.result_rows(
        result, ["batch_size", "learning_rate"]))])


if __name__ == "__main__":
    main()

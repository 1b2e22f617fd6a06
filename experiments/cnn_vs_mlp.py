"""A small CNN against MLPs of (almost) equal parameter count on digits, three seeds each.

Writes results/cnn_vs_mlp/: results.md, accuracy.png, val_loss_curves.png.
"""

import statistics

from jaxnn import experiment, plots, sweep

QUICK = ["sweep.grid.seed=[0]", "training.epochs=3", "data.limit=500"]


def describe(layers):
    """A short name for a layer list: "CNN" or "MLP 64-49-10"."""
    if any(layer["type"] == "Conv2D" for layer in layers):
        return "CNN"
    widths = [str(layer["features"]) for layer in layers if layer["type"] == "Dense"]
    return "MLP 64-" + "-".join(widths)


def main(argv=None):
    exp = experiment.start("cnn_vs_mlp", __doc__, quick=QUICK, argv=argv,
                           reads=["model.layers", "seed"])
    result = exp.sweep()
    rows, plan = result["results"], result["plan"]
    counts = sweep.param_counts(plan, exp.dataset)
    for row in rows:
        row["values"]["model"] = describe(row["values"].pop("model.layers"))
        row["values"]["params"] = counts[row["trial"]]
    models = list(dict.fromkeys(r["values"]["model"] for r in rows))
    mean = {m: statistics.mean(r["test_accuracy"] or 0.0 for r in rows
                               if r["values"]["model"] == m) for m in models}
    params = {r["values"]["model"]: r["values"]["params"] for r in rows}
    exp.figure(plots.bars([f"{m}\n{params[m]:,} params" for m in models],
                          [mean[m] for m in models], exp.path("accuracy.png"),
                          ylabel="mean test accuracy", title="equal parameter budgets"))
    exp.figure(plots.curves([r for r in rows if r["values"]["seed"] == 0], "val_loss",
                            exp.path("val_loss_curves.png"), label_keys=["model"],
                            title="validation loss (seed 0)"))
    headline = "Mean test accuracy over seeds: " + ", ".join(
        f"{m} ({params[m]:,} params) {mean[m]:.4f}" for m in models) + "."
    table = [[r["values"]["model"], f"{r['values']['params']:,}", r["values"]["seed"],
              experiment.fmt(r["val_accuracy"]), experiment.fmt(r["test_accuracy"])]
             for r in rows]
    return exp.finish(headline, [("Results", ["model", "params", "seed", "val acc", "test acc"],
                                  table)])


if __name__ == "__main__":
    main()

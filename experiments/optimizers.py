"""SGD, momentum, Nesterov, Adam and RMSProp, each over a learning-rate grid, on digits.

Best-of-grid comparison and the best trial's curves per optimizer. Writes
results/optimizers/: results.md, best_by_optimizer.png, accuracy_vs_lr.png, best_curves.png.
"""

from jaxnn import experiment, plots, sweep

QUICK = ["sweep.grid.learning_rate=[0.001, 0.1]", "training.epochs=3", "data.limit=500",
         "sweep.grid.optimizer=['sgd', 'adam']"]


def main(argv=None):
    exp = experiment.start("optimizers", __doc__, quick=QUICK, argv=argv,
                           reads=["optimizer", "learning_rate"])
    result = exp.sweep()
    ranked = sweep.rank(result["plan"], result["results"])
    best = {}
    for row in ranked:  # best first: the first row seen per optimizer is its best
        best.setdefault(row["values"]["optimizer"], row)
    names = list(best)
    exp.figure(plots.bars(names, [best[n]["test_accuracy"] or 0.0 for n in names],
                          exp.path("best_by_optimizer.png"), ylabel="test accuracy",
                          title="best of the learning-rate grid"))
    exp.figure(plots.metric_vs(result["results"], "learning_rate", "val_accuracy",
                               exp.path("accuracy_vs_lr.png"), series=["optimizer"]))
    exp.figure(plots.curves(list(best.values()), "val_loss", exp.path("best_curves.png"),
                            label_keys=["optimizer", "learning_rate"],
                            title="best trial per optimizer"))
    headline = "Best of grid (test accuracy at the best validation rate): " + ", ".join(
        f"{n} {best[n]['test_accuracy']:.4f} @ lr {best[n]['values']['learning_rate']:g}"
        for n in names) + "."
    table = [[n, f"{best[n]['values']['learning_rate']:g}",
              experiment.fmt(best[n]["val_accuracy"]), experiment.fmt(best[n]["test_accuracy"])]
             for n in names]
    return exp.finish(headline, [
        ("Best per optimizer", ["optimizer", "learning rate", "val acc", "test acc"], table),
        ("All trials", *experiment.result_rows(result, ["optimizer", "learning_rate"]))])


if __name__ == "__main__":
    main()

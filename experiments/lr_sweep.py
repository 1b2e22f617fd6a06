"""Learning rate from 1e-4 to 10 for a fixed MLP on digits.

Too-small rates crawl, a middle range learns, too-large rates diverge (marked, not crashed).
Writes results/lr_sweep/: results.md, metric_vs_lr.png, loss_curves.png.
"""

from jaxnn import experiment, plots

QUICK = ["sweep.grid.learning_rate=[0.001, 0.1, 10.0]", "training.epochs=3", "data.limit=500"]


def main(argv=None):
    exp = experiment.start("lr_sweep", __doc__, quick=QUICK, argv=argv,
                           reads=["learning_rate"])
    result = exp.sweep()
    rows = result["results"]
    exp.figure(plots.metric_vs(rows, "learning_rate", "test_accuracy",
                               exp.path("metric_vs_lr.png")))
    exp.figure(plots.curves(rows, "train_loss", exp.path("loss_curves.png"),
                            label_keys=["learning_rate"], title="training loss by learning rate"))
    best = result["best"]
    diverged = [r["values"]["learning_rate"] for r in rows if r["status"] == "diverged"]
    good = [r["values"]["learning_rate"] for r in rows
            if (r.get("test_accuracy") or 0) >= 0.9 * best["test_accuracy"]]
    headline = (f"Best rate {best['values']['learning_rate']:g}: test accuracy "
                f"{best['test_accuracy']:.4f}; within 10% of it for rates {min(good):g} to "
                f"{max(good):g}; diverged at {', '.join(f'{v:g}' for v in diverged) or 'none'}.")
    return exp.finish(headline, [("Results", *experiment.result_rows(result, ["learning_rate"]))])


if __name__ == "__main__":
    main()

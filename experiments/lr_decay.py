"""Learning-rate schedules with the same budget: constant, exponential, step, cosine.

Three seeds each; writes results/lr_decay/: results.md, val_loss_curves.png,
accuracy_by_schedule.png.
"""

import statistics

from jaxnn import experiment, plots

QUICK = ["sweep.grid.seed=[0]", "training.epochs=3", "data.limit=500",
         "sweep.grid.schedule=['constant', 'step']", "schedule.boundaries=[1.0, 2.0]",
         "schedule.decay_epochs=1.0"]


def main(argv=None):
    exp = experiment.start("lr_decay", __doc__, quick=QUICK, argv=argv,
                           reads=["schedule", "seed"])
    result = exp.sweep()
    rows = result["results"]
    schedules = list(dict.fromkeys(r["values"]["schedule"] for r in rows))
    mean = {s: statistics.mean(r["test_accuracy"] or 0.0 for r in rows
                               if r["values"]["schedule"] == s) for s in schedules}
    exp.figure(plots.curves([r for r in rows if r["values"]["seed"] == 0], "val_loss",
                            exp.path("val_loss_curves.png"), label_keys=["schedule"],
                            title="validation loss (seed 0)"))
    exp.figure(plots.bars(schedules, [mean[s] for s in schedules],
                          exp.path("accuracy_by_schedule.png"), ylabel="mean test accuracy",
                          title="schedules, mean over seeds"))
    ranked = sorted(schedules, key=mean.get, reverse=True)
    headline = ("Mean test accuracy by schedule: "
                + ", ".join(f"{s} {mean[s]:.4f}" for s in ranked) + ".")
    return exp.finish(headline, [("Results", *experiment.result_rows(result,
                                                                     ["schedule", "seed"]))])


if __name__ == "__main__":
    main()

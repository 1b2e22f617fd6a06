"""What BatchNorm does: a deep plain MLP against the same net with BatchNorm, across rates.

Six hidden layers of 64 on digits, learning rates 0.003 to 3, three seeds each. Without
BatchNorm the deep net trains in a narrow band of rates and diverges above it; with BatchNorm
(batch statistics in training, running statistics at test time) it trains over a wider range.
Writes results/batchnorm/: results.md, metric_vs_lr.png, loss_curves.png.
"""

import statistics

from jaxnn import experiment, plots

QUICK = ["sweep.grid.learning_rate=[0.03, 1.0]", "sweep.grid.seed=[0]", "training.epochs=2",
         "data.limit=500"]


def network(values: dict) -> str:
    """"BatchNorm" or "plain", from a trial's layers."""
    layers = values["model.layers"]
    return "BatchNorm" if any(spec["type"] == "BatchNorm" for spec in layers) else "plain"


def main(argv=None):
    exp = experiment.start("batchnorm", __doc__, quick=QUICK, argv=argv,
                           reads=["model.layers", "learning_rate"])
    result = exp.sweep()
    rows = [{**r, "values": {**{k: v for k, v in r["values"].items() if k != "model.layers"},
                             "network": network(r["values"])}} for r in result["results"]]
    exp.figure(plots.metric_vs(rows, "learning_rate", "test_accuracy",
                               exp.path("metric_vs_lr.png"), series=["network"]))
    exp.figure(plots.curves([r for r in rows if r["values"].get("seed", 0) == 0], "train_loss",
                            exp.path("loss_curves.png"), label_keys=["network", "learning_rate"],
                            title="training loss (seed 0)"))
    summary = []
    for name in ("plain", "BatchNorm"):
        by_rate: dict[float, list[float]] = {}
        for r in rows:
            if r["values"]["network"] == name:
                by_rate.setdefault(r["values"]["learning_rate"], []).append(
                    r.get("test_accuracy") or 0.0)
        means = {rate: statistics.mean(accs) for rate, accs in by_rate.items()}
        best = max(means, key=means.get)
        good = [rate for rate, acc in means.items() if acc >= 0.9]
        span = f"{min(good):g} to {max(good):g}" if good else "no rate"
        summary.append(f"{name}: best mean test accuracy {means[best]:.4f} at rate {best:g}, "
                       f">= 0.9 for {span}")
    headline = "; ".join(summary) + "."
    return exp.finish(headline, [("Results", *experiment.result_rows(
        {**result, "results": rows}, ["network", "learning_rate", "seed"]))])


if __name__ == "__main__":
    main()

"""Sigmoid, tanh, ReLU, leaky ReLU and GELU in the same deep MLP, same budget.

Also the gradient norm of every layer's weights at initialisation, on one training batch:
deep sigmoid networks' gradients vanish towards the input. Writes results/activations/:
results.md, grad_norms.png, val_loss_curves.png.
"""

import jax
import jax.numpy as jnp

from jaxnn import experiment, losses, models, plots
from jaxnn.train import default_hparams, init_model

QUICK = ["training.epochs=3", "data.limit=500", "model.hidden=[16, 16, 16, 16]",
         "sweep.grid.activation=['sigmoid', 'relu']"]


def gradient_norms(exp, activation):
    """||dL/dW|| per Dense layer, first to last, at initialisation on 256 training examples."""
    cfg = exp.config.replace(model={"activation": activation})
    net = models.build(cfg.model, exp.dataset.output_size)
    hparams = default_hparams(cfg)
    params, state = init_model(net, jax.random.split(jax.random.key(0))[0],
                               (None, *exp.dataset.input_shape), hparams, jnp.float32)
    x = jnp.asarray(exp.dataset.x_train[:256], jnp.float32)
    y = jnp.asarray(exp.dataset.y_train[:256])
    loss = losses.get(cfg.model.loss)
    grads = jax.jit(jax.grad(lambda p: loss(net.apply(p, state, x)[0], y)))(params)
    return [float(jnp.linalg.norm(g["w"])) for g in grads if g]


def main(argv=None):
    exp = experiment.start("activations", __doc__, quick=QUICK, argv=argv,
                           reads=["activation"])
    result = exp.sweep()
    rows = result["results"]
    names = [r["values"]["activation"] for r in rows]
    norms = {name: gradient_norms(exp, name) for name in names}
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, values in norms.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("Dense layer (1 = next to the input)")
    ax.set_ylabel("||dL/dW|| at initialisation")
    ax.set_title("gradient norm per layer")
    ax.grid(alpha=0.3)
    ax.legend()
    exp.figure(plots.save(fig, plt, exp.path("grad_norms.png")))
    exp.figure(plots.curves(rows, "val_loss", exp.path("val_loss_curves.png"),
                            label_keys=["activation"], title="validation loss"))
    ratio = {n: v[0] / v[-1] for n, v in norms.items()}
    accuracy = {r["values"]["activation"]: r["test_accuracy"] or 0.0 for r in rows}
    headline = ("Test accuracy: " + ", ".join(f"{n} {accuracy[n]:.4f}" for n in names)
                + ". First/last layer gradient norm at init: "
                + ", ".join(f"{n} {ratio[n]:.2g}" for n in names) + ".")
    header, table = experiment.result_rows(result, ["activation"])
    grad_header = ["activation", *[f"layer {i + 1}" for i in range(len(norms[names[0]]))]]
    grad_rows = [[n, *[f"{v:.3g}" for v in norms[n]]] for n in names]
    return exp.finish(headline, [("Results", header, table),
                                 ("Gradient norm per layer at initialisation", grad_header,
                                  grad_rows)])


if __name__ == "__main__":
    main()

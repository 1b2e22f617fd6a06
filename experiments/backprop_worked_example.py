"""The classic 2-2-2 backpropagation walk-through, by the manual rules and by jax.grad.

A network with two inputs, two sigmoid hidden units and two sigmoid outputs; inputs
i1 = 0.05, i2 = 0.10, targets 0.01 and 0.99, weights w1..w8 = 0.15 ... 0.55, one bias shared
by both hidden units (b1 = 0.35) and one shared by both outputs (b2 = 0.60), and the error
E = sum 1/2 (target - out)^2. The script prints the forward pass, every delta and weight
gradient by the manual rule beside jax.grad's, and one gradient-descent step (rate 0.5).

In jaxnn's row-vector layout a Dense kernel is (in, out): ``w[i, j]`` connects input i to
unit j, so the hidden kernel is [[w1, w3], [w2, w4]] and the output kernel [[w5, w7],
[w6, w8]].

Run: python experiments/backprop_worked_example.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jaxnn
from jaxnn import experiment

jax.config.update("jax_enable_x64", True)

LEARNING_RATE = 0.5
NET = jaxnn.serial(
    jaxnn.Dense(2, shared_bias=True), jaxnn.Sigmoid(),  # hidden: h1, h2
    jaxnn.Dense(2, shared_bias=True), jaxnn.Sigmoid(),  # output: o1, o2
)
STATE = ((), (), (), ())  # No layer of this network has state.


def initial_params():
    """w1..w8 and the shared biases b1, b2 of the walk-through."""
    w1, w2, w3, w4, w5, w6, w7, w8 = 0.15, 0.20, 0.25, 0.30, 0.40, 0.45, 0.50, 0.55
    hidden = {"w": jnp.array([[w1, w3], [w2, w4]]), "b": jnp.array(0.35)}
    output = {"w": jnp.array([[w5, w7], [w6, w8]]), "b": jnp.array(0.60)}
    return (hidden, (), output, ())


def weights_by_name(params) -> dict[str, float]:
    """{"w1": ..., "w8": ..., "b1": ..., "b2": ...} from the network's params."""
    hidden, output = params[0], params[2]
    names = {}
    for offset, layer in ((0, hidden), (4, output)):
        for j in range(2):  # unit
            for i in range(2):  # input
                names[f"w{offset + 2 * j + i + 1}"] = float(layer["w"][i, j])
    names["b1"], names["b2"] = float(hidden["b"]), float(output["b"])
    return names


def worked_example() -> dict[str, dict[str, float] | float]:
    """Runs the walk-through and returns every number it prints."""
    x = jnp.array([[0.05, 0.10]])
    target = jnp.array([[0.01, 0.99]])
    params = initial_params()
    loss = jaxnn.mse  # 1/2 ||a - y||^2 averaged over a batch of one: E_total.

    # Forward pass, keeping each layer's input and output (the backward pass's cache).
    activations = [x]
    for layer, layer_params in zip(NET.children, params, strict=True):
        activations.append(layer.apply(layer_params, (), activations[-1])[0])
    net_h, out_h, net_o, out_o = activations[1:]
    forward = {
        "net_h1": float(net_h[0, 0]), "net_h2": float(net_h[0, 1]),
        "out_h1": float(out_h[0, 0]), "out_h2": float(out_h[0, 1]),
        "net_o1": float(net_o[0, 0]), "net_o2": float(net_o[0, 1]),
        "out_o1": float(out_o[0, 0]), "out_o2": float(out_o[0, 1]),
        "E_total": float(loss(out_o, target)),
    }

    # Backward pass, one layer's rule at a time: dE/d(out) -> delta at each net input.
    d_out = loss.grad(out_o, target)  # out_o - target
    grads = [None] * 4
    deltas = {}
    dy = d_out
    for index in reversed(range(4)):
        grads[index], dy = NET.children[index].backward(
            params[index], (), activations[index], activations[index + 1], dy)
        if index == 3:
            deltas["delta_o1"], deltas["delta_o2"] = float(dy[0, 0]), float(dy[0, 1])
        if index == 1:
            deltas["delta_h1"], deltas["delta_h2"] = float(dy[0, 0]), float(dy[0, 1])
    grads = tuple(grads)

    autodiff = jax.grad(lambda p: loss(NET.apply(p, STATE, x)[0], target))(params)
    manual_by_name = {f"dE/d{k}": v for k, v in weights_by_name(grads).items()}
    autodiff_by_name = {f"dE/d{k}": v for k, v in weights_by_name(autodiff).items()}

    def step(update_biases: bool):
        def update(path, p, g):
            is_bias = path[-1] == jax.tree_util.DictKey("b")
            return p if is_bias and not update_biases else p - LEARNING_RATE * g
        return jax.tree_util.tree_map_with_path(update, params, grads)

    # The classic walk-through updates the weights only; updating the biases too is shown
    # beside it.
    new_params = step(update_biases=False)
    return {
        "forward": forward,
        "deltas": deltas,
        "manual": manual_by_name,
        "autodiff": autodiff_by_name,
        "updated": weights_by_name(new_params),
        "E_new": float(loss(NET.apply(new_params, STATE, x)[0], target)),
        "E_new_with_biases": float(loss(NET.apply(step(update_biases=True), STATE, x)[0],
                                        target)),
    }


def main(argv=None) -> None:
    experiment.argument_parser("backprop_worked_example", __doc__).parse_args(argv)
    result = worked_example()
    print("Forward pass")
    for name, value in result["forward"].items():
        print(f"  {name:8s} = {value:.9f}")
    print("\nDeltas (dE/dnet) by the manual rule")
    for name, value in result["deltas"].items():
        print(f"  {name:8s} = {value:.9f}")
    print("\nGradients: manual rule vs jax.grad")
    for name, value in result["manual"].items():
        other = result["autodiff"][name]
        print(f"  {name:7s} manual {value:.9f}   jax.grad {other:.9f}"
              f"   |diff| {abs(value - other):.1e}")
    print(f"\nOne gradient-descent step, learning rate {LEARNING_RATE} (weights only)")
    for name, value in result["updated"].items():
        print(f"  {name}+ = {value:.9f}")
    print(f"  E_total after the step = {result['E_new']:.9f} "
          f"(was {result['forward']['E_total']:.9f})")
    print(f"  E_total if the shared biases are updated too = {result['E_new_with_biases']:.9f}")


if __name__ == "__main__":
    main()

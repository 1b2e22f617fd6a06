"""Gradients by the explicit delta recursion, and a checker against `jax.grad`.

`grad` runs the forward pass, takes the loss's manual output delta ``dL/da^L`` and walks
the network's ``backward`` rules in reverse -- no autodiff involved. In the classic notation
(column vectors, ``z^l = W^l a^{l-1} + b^l``, ``a^l = g(z^l)``):

    delta^L = dL/da^L ⊙ g'(z^L)                (for J = 1/2 ||a^L - y||^2: a^L - y)
    delta^l = ((W^{l+1})^T delta^{l+1}) ⊙ g'(z^l)
    dW^l = delta^l (a^{l-1})^T / m,  db^l = sum_batch delta^l / m

jaxnn stores ``W`` as (n_in, n_out) and rows as examples, so the same rules read
``dW = x^T dy`` and ``dx = dy W^T`` (see `jaxnn.layers.dense`), with the 1/m carried by the
loss's delta. A Dense layer and the activation after it are two layers here: Dense passes
back ``dy W^T`` and the activation multiplies it by ``g'(z)``.

`check` holds the manual gradients against `jax.grad` and central finite differences leaf
by leaf, and checks every layer's rule on its own against `jax.vjp` of its ``apply`` so that
a wrong rule is reported by the layer that owns it. Layers whose ``jax.grad`` runs their own
rule on CPU (`jaxnn.layer.with_rule_gradient`) are differentiated through their plain
`Layer.reference` forward here, so the comparison stays independent.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn._table import format_table
from jaxnn.combinators import pullback, trace
from jaxnn.layer import Layer, check_bool, check_layer
from jaxnn.losses import Loss, check_loss


def value_and_grad(
    net: Layer,
    loss: Loss,
    params: Any,
    state: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array | None = None,
    train: bool = False,
) -> tuple[jax.Array, Any]:
    """The loss and its gradient with respect to ``params``, by the manual rules.

    Args:
      net: the network (a `Layer`, usually built with `serial`).
      loss: a `jaxnn.losses.Loss`; its ``grad`` gives the output delta.
      params: the network's parameters.
      state: the network's state (``()`` per stateless layer, from ``net.init``).
      x: a batch of inputs.
      y: the matching targets.
      key: the PRNG key given to ``apply`` (needed by Dropout when ``train``).
      train: training mode (Dropout active, BatchNorm on batch statistics).

    Returns:
      ``(loss value, grads)`` with ``grads`` shaped like ``params``.
    """
    value, grads, _, _ = value_grad_and_output(net, loss, params, state, x, y, key=key,
                                               train=train)
    return value, grads


def value_grad_and_output(net, loss, params, state, x, y, *, key=None, train=False,
                          loss_dtype=None):
    """Like `value_and_grad`, also returning the network's output and its new state:
    ``(value, grads, output, new_state)``.

    The forward pass records every layer's input and output (`jaxnn.combinators.trace`, the
    cache of classic backprop) and the backward pass walks that record in reverse
    (`jaxnn.combinators.pullback`), so nothing is computed twice.

    ``loss_dtype``: when given, the output is cast to it before the loss (mixed precision:
    a bfloat16 network, a float32 loss); the returned output is the cast one.
    """
    check_layer(net, "manual: net")
    check_loss(loss, "manual")
    train = check_bool(train, "train", "manual")  # a jnp.bool_ would not key the cache
    return _compiled_backprop(net, loss, train, loss_dtype)(params, state, x, y, key)


@functools.lru_cache(maxsize=64)
def _compiled_backprop(net: Layer, loss: Loss, train: bool, loss_dtype):
    """`value_grad_and_output` as one jitted function per network, loss and mode: called
    eagerly, one compiled program (reused from call to call) rather than one per operation."""

    @jax.jit
    def run(params, state, x, y, key):
        pred, new_state, tape = trace(net, params, state, x, key=key, train=train)
        net_dtype = pred.dtype
        if loss_dtype is not None:
            pred = pred.astype(loss_dtype)
        dy = loss.grad(pred, y).astype(net_dtype)
        grads, _ = pullback(tape, dy)
        # In the params' dtypes and containers, as `jax.grad` gives them (a rule may
        # promote: float32 params on a float64 input; params given as lists get lists),
        # leaf to leaf by path (an OrderedDict's leaves come in another order than a dict's).
        by_path = dict(jax.tree_util.tree_flatten_with_path(grads)[0])
        leaves, structure = jax.tree_util.tree_flatten_with_path(params)
        if by_path.keys() != {path for path, _ in leaves}:
            raise ValueError("manual: the params do not match the network's: "
                             f"{structure} against {jax.tree.structure(grads)}")
        grads = jax.tree.unflatten(structure, [by_path[path].astype(p.dtype)
                                               for path, p in leaves])
        return loss.value(pred, y), grads, pred, new_state

    return run


def grad(
    net: Layer,
    loss: Loss,
    params: Any,
    state: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array | None = None,
    train: bool = False,
) -> Any:
    """The gradient of ``loss(net(params, state, x), y)`` by the manual rules; see
    `value_and_grad`."""
    return value_and_grad(net, loss, params, state, x, y, key=key, train=train)[1]


class LeafError(NamedTuple):
    """How one parameter leaf's manual gradient compares.

    Relative errors are ``max |a - b| / max |b|`` over the leaf (``b`` the `jax.grad`
    reference), or over the whole gradient's ``max |b|`` for a leaf whose gradient is zero up
    to rounding (below the square root of eps times that: a bias before a BatchNorm).
    Finite differences are taken at ``fd_elements`` sampled entries of the leaf.
    """

    path: str
    layer: str
    autodiff_abs: float
    autodiff_rel: float
    fd_abs: float
    fd_rel: float
    fd_elements: int


class LayerError(NamedTuple):
    """How one layer's own rule compares with `jax.vjp` of its ``apply`` (relative errors)."""

    layer: str
    dparams_rel: float
    dx_rel: float


class CheckReport(NamedTuple):
    """The result of `check`: per-leaf and per-layer errors and the worst of each."""

    leaves: tuple[LeafError, ...]
    layers: tuple[LayerError, ...]

    @property
    def worst_autodiff_rel(self) -> float:
        return max((leaf.autodiff_rel for leaf in self.leaves), default=0.0)

    @property
    def worst_fd_rel(self) -> float:
        return max((leaf.fd_rel for leaf in self.leaves), default=0.0)

    def table(self) -> str:
        """The per-leaf errors as a printable table."""
        return format_table(
            ("leaf", "layer", "|man-grad|", "rel", "|man-fd|", "rel (n)"),
            [(leaf.path, leaf.layer, f"{leaf.autodiff_abs:.2e}", f"{leaf.autodiff_rel:.2e}",
              f"{leaf.fd_abs:.2e}", f"{leaf.fd_rel:.2e} ({leaf.fd_elements})")
             for leaf in self.leaves],
        )


class GradientCheckError(AssertionError):
    """A manual gradient disagrees with `jax.grad` or finite differences beyond tolerance."""


def _relative(actual, reference, scale: float | None = None) -> tuple[float, float]:
    """``(max |a - b|, that / scale)``, ``scale`` by default ``max |b|``."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    if actual.size == 0:
        return 0.0, 0.0
    abs_err = float(np.max(np.abs(actual - reference)))
    scale = float(np.max(np.abs(reference))) if scale is None else scale
    if abs_err == 0:
        return 0.0, 0.0
    return abs_err, abs_err / scale if scale > 0 else math.inf


def _tree_relative(actual, reference) -> float:
    errors = [_relative(a, b)[1] for a, b in zip(
        jax.tree.leaves(actual), jax.tree.leaves(reference), strict=True)]
    return max(errors, default=0.0)


def _describe(path) -> str:
    return "".join(str(entry) for entry in path) or "<root>"


def _owner(net: Layer, path) -> str:
    """The leaf layer owning a parameter path: ``[2]['w']`` -> ``layer 2 (Dense(10))``."""
    layer, indices = net, []
    for entry in path:
        if not (layer.children and isinstance(entry, jax.tree_util.SequenceKey)):
            break
        indices.append(str(entry.idx))
        layer = layer.children[entry.idx]
    return f"layer {'.'.join(indices)} ({layer.name})" if indices else layer.name


def _sample(size: int, max_elements: int, rng: np.random.Generator) -> np.ndarray:
    """The flat indices of a leaf at which finite differences are taken."""
    if size <= max_elements:
        return np.arange(size)
    return np.sort(rng.choice(size, max_elements, replace=False))


def _finite_differences(loss_of_leaves, leaves, index, chosen):
    """Central, forward and backward differences of the loss at the entries ``chosen`` of
    leaf ``index``, shape ``(3, len(chosen))``.

    Where a step crosses a kink (a ReLU at 0, a max-pool's tie), the central difference
    averages two slopes and matches neither; the one-sided difference on the side of the
    point's own slope (the derivative autodiff takes there) still does. In float32 a step of
    eps^(1/3) crossed a kink often enough to fail 5 in 24 correct small CNNs."""
    leaf = leaves[index]
    flat = leaf.reshape(-1)
    step = float(jnp.finfo(leaf.dtype).eps) ** (1 / 3) * jnp.maximum(1.0, jnp.abs(flat[chosen]))
    basis = jnp.zeros((len(chosen), leaf.size), leaf.dtype).at[np.arange(len(chosen)),
                                                               chosen].set(step)

    def loss_at(delta):
        moved = list(leaves)
        moved[index] = (flat + delta).reshape(leaf.shape)
        return loss_of_leaves(moved)

    plus, minus = jnp.split(jax.vmap(loss_at)(jnp.concatenate([basis, -basis])), 2)
    at = loss_of_leaves(leaves)
    return jnp.stack([(plus - minus) / (2 * step), (plus - at) / step, (at - minus) / step])


def _nearest(manual_values, differences):
    """Per entry, of the three differences (`_finite_differences`), the one nearest the
    manual gradient: the check fails only where no difference agrees with it."""
    nearest = np.argmin(np.abs(differences - manual_values[None, :]), axis=0)
    return np.take_along_axis(differences, nearest[None, :], axis=0)[0]


def _default_tolerances(params, x) -> tuple[float, float]:
    """(autodiff rtol, finite-difference rtol) for the floating dtypes of the params and the
    input: float64 only where both are (a float32 input computes in float32 somewhere,
    whatever the params' dtype)."""
    dtypes = {jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves((params, x))
              if jnp.issubdtype(leaf.dtype, jnp.floating)}
    if dtypes and all(d == jnp.float64 for d in dtypes):
        return 1e-8, 1e-4
    return 1e-4, 5e-2


def check(
    net: Layer,
    loss: Loss,
    params: Any,
    state: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array | None = None,
    train: bool = False,
    rtol: float | None = None,
    fd_rtol: float | None = None,
    fd_elements: int = 16,
    seed: int = 0,
    verbose: bool = True,
) -> CheckReport:
    """Compares manual gradients with `jax.grad` and central finite differences.

    Every parameter leaf is compared three ways (manual, `jax.grad`, finite differences at
    up to ``fd_elements`` sampled entries). Every leaf layer's rule is also checked on its
    own, at the activations of this batch, against `jax.vjp` of its ``apply`` with a random
    cotangent, so a wrong rule is reported by the layer that owns it even when that layer
    has no parameters.

    Args:
      net: the network.
      loss: a `jaxnn.losses.Loss`.
      params: the network's parameters (float64 for tight tolerances).
      state: the network's state (from ``net.init``).
      x: a batch of inputs.
      y: the matching targets.
      key: PRNG key for ``apply`` (Dropout when ``train``).
      train: training mode.
      rtol: tolerance on ``max |manual - autodiff| / max |autodiff|`` per leaf and per
        layer rule; default 1e-8 where the params and ``x`` are float64, 1e-4 otherwise.
      fd_rtol: tolerance on the same against finite differences; default 1e-4 in float64,
        5e-2 otherwise.
      fd_elements: entries per leaf checked by finite differences.
      seed: seeds the sampled entries and the random cotangents.
      verbose: print the per-leaf table.

    Returns:
      A `CheckReport`.

    Raises:
      GradientCheckError: naming the leaf and layer (and the layer whose own rule is wrong)
        when a tolerance is exceeded.
    """
    default_rtol, default_fd_rtol = _default_tolerances(params, x)
    rtol = default_rtol if rtol is None else rtol
    fd_rtol = default_fd_rtol if fd_rtol is None else fd_rtol
    rng = np.random.default_rng(seed)

    leaves, treedef = jax.tree.flatten(params)
    chosen = [_sample(leaf.size, fd_elements, rng) for leaf in leaves]
    reference = net.reference  # plain forwards: jax.grad independent of the manual rules
    labels = []

    def measure(leaves, state, x, y, key):  # one program: op by op, a check takes seconds
        def loss_of_leaves(flat_leaves):
            tree = jax.tree.unflatten(treedef, flat_leaves)
            return loss.value(reference.apply(tree, state, x, key=key, train=train)[0], y)

        params = jax.tree.unflatten(treedef, leaves)
        manual = grad(net, loss, params, state, x, y, key=key, train=train)
        autodiff = jax.grad(loss_of_leaves)(leaves)
        fd = [_finite_differences(loss_of_leaves, leaves, index, indices)
              for index, indices in enumerate(chosen)]
        tape = trace(net, params, state, x, key=key, train=train)[2]
        rules = []
        for leaf in tape.leaves():
            labels.append(leaf.label)
            rules.append(_layer_rule(leaf, train, rng))
        return manual, autodiff, fd, rules

    manual, autodiff, fd, rules = jax.device_get(jax.jit(measure)(leaves, state, x, y, key))
    leaf_errors = _leaf_errors(net, manual, autodiff, chosen, fd)
    layer_errors = [
        LayerError(label, _tree_relative(got_dparams, want_dparams),
                   _tree_relative(got_dx, want_dx))
        for label, ((got_dparams, got_dx), (want_dparams, want_dx)) in zip(
            labels, rules, strict=True)]

    report = CheckReport(tuple(leaf_errors), tuple(layer_errors))
    if verbose:
        print(report.table())
    _raise_if_exceeded(report, rtol, fd_rtol)
    return report


def _leaf_errors(net: Layer, manual, autodiff, chosen, fd) -> list[LeafError]:
    """Each parameter leaf's manual gradient against `jax.grad`'s (``autodiff``, in leaf
    order) and against the finite differences ``fd`` at its ``chosen`` entries."""
    manual_paths = jax.tree_util.tree_flatten_with_path(manual)[0]
    whole_scale = max((float(np.max(np.abs(leaf))) for leaf in autodiff if leaf.size),
                      default=0.0)
    leaf_errors = []
    for (path, manual_leaf), autodiff_leaf, indices, fd_values in zip(
            manual_paths, autodiff, chosen, fd, strict=True):
        if manual_leaf.shape != autodiff_leaf.shape:
            raise GradientCheckError(
                f"manual gradient of {_describe(path)} ({_owner(net, path)}) has shape "
                f"{manual_leaf.shape}, the parameter {autodiff_leaf.shape}")
        # A leaf whose gradient is zero up to rounding (a bias before a BatchNorm) is
        # measured on the scale of the whole gradient: beside it, both are noise.
        scale = float(np.max(np.abs(autodiff_leaf))) if autodiff_leaf.size else 0.0
        if scale <= float(jnp.finfo(autodiff_leaf.dtype).eps) ** 0.5 * whole_scale:
            scale = whole_scale
        auto_abs, auto_rel = _relative(manual_leaf, autodiff_leaf, scale)
        picked = manual_leaf.reshape(-1)[indices]
        fd_abs, fd_rel = _relative(picked, _nearest(picked, fd_values), scale)
        leaf_errors.append(LeafError(_describe(path), _owner(net, path), auto_abs, auto_rel,
                                     fd_abs, fd_rel, len(indices)))
    return leaf_errors


def _layer_rule(leaf, train: bool, rng: np.random.Generator):
    """One leaf layer's rule and `jax.vjp` of its plain forward, at a random cotangent:
    ``((dparams, dx) by the rule, (dparams, dx) by jax.vjp)``."""
    def forward(p, xx):
        return leaf.layer.reference.apply(p, leaf.state, xx, key=leaf.key, train=train)[0]

    layer_y, vjp = jax.vjp(forward, leaf.params, leaf.x)
    cotangent = jax.tree.map(
        lambda part: jnp.asarray(rng.standard_normal(part.shape), part.dtype), layer_y)
    got = leaf.layer.backward(leaf.params, leaf.state, leaf.x, layer_y, cotangent,
                              key=leaf.key, train=train)
    return got, vjp(cotangent)


def _raise_if_exceeded(report: CheckReport, rtol: float, fd_rtol: float) -> None:
    problems = [
        f"layer rule {layer.layer}: backward disagrees with jax.vjp of apply "
        f"(dparams rel {layer.dparams_rel:.2e}, dx rel {layer.dx_rel:.2e}; tolerance {rtol:g})"
        for layer in report.layers
        if not (layer.dparams_rel <= rtol and layer.dx_rel <= rtol)
    ]
    problems += [
        f"leaf {leaf.path} of {leaf.layer}: manual vs jax.grad rel {leaf.autodiff_rel:.2e} "
        f"(tolerance {rtol:g})"
        for leaf in report.leaves if not leaf.autodiff_rel <= rtol
    ]
    problems += [
        f"leaf {leaf.path} of {leaf.layer}: manual vs finite differences rel "
        f"{leaf.fd_rel:.2e} (tolerance {fd_rtol:g})"
        for leaf in report.leaves if not leaf.fd_rel <= fd_rtol
    ]
    if problems:
        raise GradientCheckError("manual gradient check failed:\n  " + "\n  ".join(problems))

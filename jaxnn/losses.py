"""Losses averaged over the batch, each with its manual gradient with respect to the prediction.

A `Loss` is a NamedTuple ``(value, grad)``: ``value(pred, target) -> scalar`` and
``grad(pred, target) -> dL/dpred`` (the delta at the output, already divided by the batch
size ``m``). Calling a loss calls ``value``. The batch is the leading axis.

Predictions and targets must have the same shape (integer labels: the logits' without the
class axis); a loss refuses others rather than broadcast them, as ``(N, 1) - (N,)`` would
silently to ``(N, N)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Loss(NamedTuple):
    """A loss with its manual gradient.

    Attributes:
      value: ``value(pred, target) -> scalar``, averaged over the leading (batch) axis.
      grad: ``grad(pred, target) -> dL/dpred``, shaped like ``pred``.
      name: the name configs use.
    """

    value: Callable[[jax.Array, jax.Array], jax.Array]
    grad: Callable[[jax.Array, jax.Array], jax.Array]
    name: str

    def __call__(self, pred: jax.Array, target: jax.Array) -> jax.Array:
        return self.value(pred, target)


def check_loss(loss: object, where: str) -> Loss:
    """``loss``, which ``where`` takes as a `Loss`.

    Raises:
      TypeError: quoting ``loss`` (a loss's name, or another library's loss function, fail
        later on the missing ``grad`` or ``value``).
    """
    if not isinstance(loss, Loss):
        raise TypeError(f"{where}: loss must be a jaxnn.losses.Loss (e.g. "
                        f"jaxnn.losses.softmax_cross_entropy), got {loss!r}")
    return loss


def _batch_mean_of_sums(per_element: jax.Array) -> jax.Array:
    """Sums over every axis but the batch, then averages over the batch."""
    return jnp.sum(per_element) / per_element.shape[0]


def _check_same_shape(loss: str, pred: jax.Array, target: jax.Array) -> None:
    """Raises ValueError unless ``pred`` and ``target`` have one shape (static, so this
    works under ``jax.jit``)."""
    if jnp.shape(pred) != jnp.shape(target):
        raise ValueError(f"{loss}: predictions of shape {jnp.shape(pred)} and targets of "
                         f"shape {jnp.shape(target)} differ; reshape the targets to the "
                         f"predictions' shape (e.g. y[:, None] for one output)")


def _mse_value(pred, target):
    _check_same_shape("mse", pred, target)
    return _batch_mean_of_sums(0.5 * (pred - target) ** 2)


def _mse_grad(pred, target):
    _check_same_shape("mse", pred, target)
    return (pred - target) / pred.shape[0]


mse = Loss(_mse_value, _mse_grad, "mse")
"""``J = 1/2 ||a - y||^2`` averaged over the batch; ``dJ/da = (a - y) / m``."""


def _are_labels(logits, target) -> bool:
    """Whether ``target`` holds integer labels (True) or rows like the logits (False).

    Raises:
      ValueError: for a shape that is neither, quoting both shapes, or labels that are not
        integers.
    """
    if target.shape == logits.shape[:-1]:
        if not jnp.issubdtype(target.dtype, jnp.integer):  # 1.7 would be cast to label 1
            raise ValueError(f"softmax_cross_entropy: labels of shape {target.shape} must be "
                             f"integers, got {target.dtype}")
        return True
    if target.shape != logits.shape:
        raise ValueError(
            f"softmax_cross_entropy: targets of shape {target.shape} fit neither integer "
            f"labels {logits.shape[:-1]} nor one-hot rows {logits.shape}"
        )
    return False


def _label_indices(logits, target) -> tuple[jax.Array, jax.Array]:
    """``(indices, in_range)``: integer labels as int32 indices, and whether each lies in
    [0, C) -- judged before the cast, so that a large int64 label cannot wrap into range."""
    in_range = (target >= 0) & (target < logits.shape[-1])
    return target.astype(jnp.int32), in_range


def _sce_value(logits, target):
    if _are_labels(logits, target):
        # Integer labels: logsumexp(z) - z[label], picking the label's logit rather than
        # multiplying log-probabilities by one-hot rows (which made workload A's CPU train
        # step 11-18% slower) or normalizing every logit (2.6-4% slower than this).
        indices, in_range = _label_indices(logits, target)
        picked = jnp.take_along_axis(logits, indices[..., None], axis=-1)[..., 0]
        # A label out of range picks a wrapped (-1: the last) or NaN logit; it adds 0.
        per_example = jnp.where(in_range, jax.nn.logsumexp(logits, axis=-1) - picked,
                                jnp.zeros((), logits.dtype))
        return _batch_mean_of_sums(per_example)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return _batch_mean_of_sums(-target.astype(logits.dtype) * log_probs)


def _sce_grad(logits, target):
    softmax = jax.nn.softmax(logits, axis=-1)
    if _are_labels(logits, target):  # one-hot rows: each sums to 1
        indices, in_range = _label_indices(logits, target)
        onehot = jax.nn.one_hot(indices, logits.shape[-1], dtype=logits.dtype)
        # Multiplying by in_range / m, instead of dividing by m, zeroes the rows of labels
        # out of range without another pass over the logits.
        scale = in_range.astype(logits.dtype) / logits.shape[0]
        return (softmax - onehot) * scale[..., None]
    probs = target.astype(logits.dtype)
    return (softmax * probs.sum(axis=-1, keepdims=True) - probs) / logits.shape[0]


softmax_cross_entropy = Loss(_sce_value, _sce_grad, "softmax_cross_entropy")
"""Cross-entropy of ``softmax(logits)`` against integer labels or one-hot/probability rows.

Fused with its softmax, the manual gradient is ``(softmax(z) - onehot(y)) / m``; for target
rows ``t`` (which need not sum to 1), ``(softmax(z) Σt - t) / m``.

An integer label outside [0, C) -- such as -1 marking a padding example -- is its one-hot
row as ``jax.nn.one_hot`` gives it, all zeros: the example adds nothing to the loss or its
gradient, value and manual gradient alike, but still counts in the batch size ``m``. Labels
are traced values, so they are not checked; the CLI's data loading refuses them.
"""


def _sbce_value(logits, target):
    _check_same_shape("sigmoid_binary_cross_entropy", logits, target)
    target = target.astype(logits.dtype)
    # log(1 + exp(z)) - y z, written to stay finite for large |z|.
    return _batch_mean_of_sums(jax.nn.softplus(logits) - target * logits)


def _sbce_grad(logits, target):
    _check_same_shape("sigmoid_binary_cross_entropy", logits, target)
    return (jax.nn.sigmoid(logits) - target.astype(logits.dtype)) / logits.shape[0]


sigmoid_binary_cross_entropy = Loss(_sbce_value, _sbce_grad, "sigmoid_binary_cross_entropy")
"""Binary cross-entropy of ``sigmoid(logits)`` against 0/1 targets; gradient ``(σ(z) - y)/m``."""


def _bce_value(probs, target):
    _check_same_shape("binary_cross_entropy", probs, target)
    target = target.astype(probs.dtype)
    return _batch_mean_of_sums(-(target * jnp.log(probs) + (1 - target) * jnp.log1p(-probs)))


def _bce_grad(probs, target):
    _check_same_shape("binary_cross_entropy", probs, target)
    target = target.astype(probs.dtype)
    return (probs - target) / (probs * (1 - probs)) / probs.shape[0]


binary_cross_entropy = Loss(_bce_value, _bce_grad, "binary_cross_entropy")
"""Binary cross-entropy on probabilities in (0, 1) (after a Sigmoid layer).

``J = -[y log a + (1 - y) log(1 - a)]``; ``dJ/da = (a - y) / (a (1 - a)) / m``. Prefer
`sigmoid_binary_cross_entropy` on logits, which stays finite when ``a`` saturates.
"""

LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (mse, softmax_cross_entropy, sigmoid_binary_cross_entropy, binary_cross_entropy)
}


def get(name: str) -> Loss:
    """The loss called ``name`` (see `LOSSES`)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}") from None

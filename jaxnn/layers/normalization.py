"""BatchNorm, LayerNorm and GroupNorm, with their manual rules.

Each standardizes its input over some axes, ``x̂ = (x - μ) / σ`` with ``σ = sqrt(var + ε)``,
then scales and shifts it per channel (the last axis): ``y = γ x̂ + β``. With ``m`` the number
of values each ``μ`` averages, the rule of a standardization is

    dγ = Σ dy ⊙ x̂,   dβ = Σ dy                         (sums over every axis but the channel)
    dx = (γ/σ)/m · (m·dy − Σdy − x̂·Σ(dy ⊙ x̂))           (sums over the standardized axes)

(the classic batch-normalization backward; written with means it is
``dx = (1/σ)(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂))`` with ``dx̂ = γ dy``, which is how LayerNorm and
GroupNorm, whose γ varies inside a group, use it). When ``μ`` and ``σ`` are constants -- BatchNorm
in eval mode, on its running statistics -- the rule is just ``dx = γ dy / σ``.

BatchNorm's state is its running mean and variance. In training mode (``train=True``) it
normalizes with the statistics of the batch (over the batch and, for NHWC images, the spatial
axes) and returns the state moved towards them, as Flax and Haiku do:
``running = momentum · running + (1 − momentum) · batch`` (momentum 0.99 keeps 99%; PyTorch's
``momentum=0.1`` is this ``momentum=0.9``). The running variance is the batch's biased variance,
as in Flax. In eval mode it normalizes with the running statistics and returns them unchanged.

Statistics (and the rules' sums) are computed in float32 at least, as Flax does: a bfloat16 or
float16 input is normalized in float32, and ``x̂``, back in the input's dtype, is scaled and
shifted by the params: the output takes their dtype where it is wider (float32 params give a
float32 output, as Flax's do; give ``dtype=jnp.bfloat16`` for a bfloat16 one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxnn.layer import (
    Layer,
    Shape,
    ShapeError,
    at_least_float32,
    check_applied,
    check_bool,
    check_single,
    float_dtype,
    is_real,
    param_dtype,
    positive_int,
    stateless,
    with_rule_gradient,
)


def _check_input(name: str, input_shape: Shape, min_rank: int = 2) -> int:
    """The number of channels (last axis) of a single, known-channel input."""
    check_single(name, input_shape)
    if len(input_shape) < min_rank:
        raise ShapeError(f"{name} expects input of rank >= {min_rank} (batch, ..., channels), "
                         f"got shape {tuple(input_shape)}")
    channels = input_shape[-1]
    if channels is None:
        raise ShapeError(f"{name} needs a known number of channels, got {tuple(input_shape)}")
    return channels


def _affine_params(channels: int, use_scale: bool, use_bias: bool, dtype) -> dict:
    params = {}
    if use_scale:
        params["scale"] = jnp.ones((channels,), param_dtype(dtype))
    if use_bias:
        params["bias"] = jnp.zeros((channels,), param_dtype(dtype))
    return params


def _floating(x, params, default):
    """``x`` itself when floating (a bfloat16 input is normalized in its dtype), else cast to
    the params' dtype (``default`` without params): integer pixels in their own dtype
    truncated the statistics and wrapped ``x - mean`` around."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x.astype(next(iter(params.values())).dtype if params else default)


def _wide(x):
    """The dtype statistics of ``x`` are computed in (`at_least_float32`; in float16,
    [267.0, 266.75] normalized to [0, -1.41], not [1, -1])."""
    return at_least_float32(x.dtype)


def _channels(vector, ndim):
    """A per-channel vector shaped to broadcast over an input of rank ``ndim``."""
    return vector.reshape((1,) * (ndim - 1) + (-1,))


def _scale_shift(params, xhat):
    y = xhat * _channels(params["scale"], xhat.ndim) if "scale" in params else xhat
    return y + _channels(params["bias"], xhat.ndim) if "bias" in params else y


def _affine_grads(params, xhat, dy, axes):
    """``dγ = Σ dy ⊙ x̂`` and ``dβ = Σ dy`` over ``axes`` (all but the channel axis)."""
    grads = {}
    if "scale" in params:
        grads["scale"] = jnp.sum(dy * xhat, axis=axes)
    if "bias" in params:
        grads["bias"] = jnp.sum(dy, axis=axes)
    return grads


def _check_options(name: str, epsilon: float, use_scale: bool, use_bias: bool, dtype,
                   momentum: float | None = None) -> None:
    check_bool(use_scale, "use_scale", name)
    float_dtype(dtype, "dtype", name)
    check_bool(use_bias, "use_bias", name)
    if not is_real(epsilon) or not 0 < epsilon < math.inf:
        raise ValueError(f"{name}: epsilon must be finite and > 0, got {epsilon!r}")
    if momentum is not None and (not is_real(momentum) or not 0 <= momentum < 1):
        raise ValueError(f"{name}: momentum is the share of the running statistics kept per "
                         f"step, in [0, 1); got {momentum!r}")


def BatchNorm(
    *,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    dtype: jnp.dtype | None = None,
) -> Layer:
    """Batch normalization over every axis but the last (channels): the batch of (N, C), or
    the batch and spatial axes of NHWC images.

    Args:
      momentum: the share of the running statistics kept at each training step (Flax's and
        Haiku's convention, default 0.99).
      epsilon: added to the variance.
      use_scale: learn the per-channel scale ``γ`` (params ``"scale"``, init 1).
      use_bias: learn the per-channel shift ``β`` (params ``"bias"``, init 0).
      dtype: parameter and state dtype; default float32 (float64 with ``jax_enable_x64``).

    Returns:
      A `Layer` with state ``{"mean": (C,), "var": (C,)}`` (init 0 and 1).
    """
    _check_options("BatchNorm", epsilon, use_scale, use_bias, dtype, momentum)
    name = f"BatchNorm(momentum={momentum})"

    def init(key: jax.Array, input_shape: Shape):
        del key  # Deterministic initial values.
        channels = _check_input(name, input_shape)
        state = {"mean": jnp.zeros((channels,), param_dtype(dtype)),
                 "var": jnp.ones((channels,), param_dtype(dtype))}
        return tuple(input_shape), _affine_params(channels, use_scale, use_bias, dtype), state

    def statistics(params, x, state, train):
        """``(x, axes, mean, var)``: ``x`` floating (an integer one in the params' dtype, as
        LayerNorm's; else the state's), and the batch's statistics in training, the running
        ones otherwise, in at least float32 (`_wide`)."""
        if not (isinstance(state, Mapping) and {"mean", "var"} <= state.keys()):
            raise ValueError(f"{name}: its state is the {{'mean', 'var'}} dict its init "
                             f"returns (running statistics), got {_described(state)}")
        check_applied(name, x, channels=state["mean"].shape[-1])
        x = _floating(x, params, state["mean"].dtype)
        axes, wide = tuple(range(x.ndim - 1)), _wide(x)
        if not check_bool(train, "train", name):  # ("no" would have trained)
            return x, axes, *(_channels(state[k].astype(wide), x.ndim)
                              for k in ("mean", "var"))
        mean = jnp.mean(x.astype(wide), axis=axes, keepdims=True)
        return x, axes, mean, jnp.mean(jnp.square(x.astype(wide) - mean), axis=axes,
                                       keepdims=True)

    def apply(params, state, x, *, key=None, train=False):
        del key  # Deterministic.
        x, _, mean, var = statistics(params, x, state, train)
        xhat = (x.astype(mean.dtype) - mean) * jax.lax.rsqrt(var + epsilon)
        y = _scale_shift(params, xhat.astype(x.dtype))
        if not train or x.size == 0:  # an empty batch has no statistics to keep (NaN)
            return y, state
        # In the statistics' own dtype: in a bfloat16 input's, 0.99 rounds to 0.988 and
        # small updates round away, so the running mean stalled short of the batches'.
        new_state = {}
        for name, batch in (("mean", mean), ("var", var)):
            keep = jnp.asarray(momentum, state[name].dtype)
            new_state[name] = keep * state[name] + (1 - keep) * jax.lax.stop_gradient(
                batch.reshape(-1)).astype(state[name].dtype)
        return y, new_state

    def backward(params, state, x, y, dy, *, key=None, train=False):
        del y, key  # Recomputed from x.
        x, axes, mean, var = statistics(params, x, state, train)
        inv_sigma = jax.lax.rsqrt(var + epsilon)
        xhat = (x.astype(mean.dtype) - mean) * inv_sigma
        grads = _affine_grads(params, xhat.astype(x.dtype), dy, axes)
        gamma = (_channels(params["scale"], x.ndim).astype(mean.dtype) if use_scale
                 else jnp.ones((), mean.dtype))
        dy = dy.astype(mean.dtype)
        if not train:  # mu and sigma are constants
            return grads, (dy * gamma * inv_sigma).astype(x.dtype)
        m = math.prod(x.shape[:-1])
        sum_dy = jnp.sum(dy, axis=axes, keepdims=True)
        sum_dy_xhat = jnp.sum(dy * xhat, axis=axes, keepdims=True)
        dx = (gamma * inv_sigma) / m * (m * dy - sum_dy - _centred(xhat, axes) * sum_dy_xhat)
        return grads, dx.astype(x.dtype)

    return with_rule_gradient(Layer(init, apply, backward, name=name))


def _described(value) -> str:
    """``value`` quoted, or its structure where it holds arrays (their values would flood)."""
    return repr(value) if not jax.tree.leaves(value) else str(jax.tree.structure(value))


def _standardize(x, axes, epsilon):
    """``(x̂, 1/σ)`` over ``axes`` (kept as size-1 axes, for broadcasting), in `_wide`."""
    x = x.astype(_wide(x))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    inv_sigma = jax.lax.rsqrt(var + epsilon)
    return (x - mean) * inv_sigma, inv_sigma


def _centred(xhat, axes):
    """``x̂ − mean(x̂)``: zero in exact arithmetic, but where ``x`` lies far from zero for
    its spread (unstandardized features), float32's ``x − μ`` leaves ``Σx̂ ≠ 0``, which
    the rule's ``x̂·Σ(dy ⊙ x̂)`` term would carry into ``Σdx`` (exactly zero, as autodiff
    through ``x − μ`` keeps it); a layer before then got that sum times its input's mean
    in its weight gradient (1.9e-2 relative error at a mean 255 of standard deviation 1,
    against autodiff's 9e-5)."""
    return xhat - jnp.mean(xhat, axis=axes, keepdims=True)


def _standardize_backward(dxhat, xhat, inv_sigma, axes):
    """``dx = (1/σ)(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂))`` over the standardized ``axes``
    (its last ``x̂`` `_centred`)."""
    return inv_sigma * (dxhat - jnp.mean(dxhat, axis=axes, keepdims=True)
                        - _centred(xhat, axes) * jnp.mean(dxhat * xhat, axis=axes,
                                                          keepdims=True))


def _per_example_norm(name, grouped, ungrouped, epsilon, use_scale, use_bias, dtype,
                      check=None) -> Layer:
    """A stateless normalization over axes of each example: ``grouped(x)`` reshapes ``x`` so
    that the standardized axes are ``axes``; ``ungrouped`` reshapes back."""

    def init(key: jax.Array, input_shape: Shape):
        del key  # Deterministic initial values.
        channels = _check_input(name, input_shape)
        if check is not None:
            check(input_shape)
        return tuple(input_shape), _affine_params(channels, use_scale, use_bias, dtype)

    def forward(x):
        grouped_x, axes = grouped(x)
        xhat, inv_sigma = _standardize(grouped_x, axes, epsilon)
        return xhat, inv_sigma, axes

    def apply(params, x, *, key=None, train=False):
        del key, train  # Deterministic, the same in both modes.
        if params:
            check_applied(name, x, channels=next(iter(params.values())).shape[-1])
        x = _floating(x, params, param_dtype(dtype))
        xhat, _, _ = forward(x)
        return _scale_shift(params, ungrouped(xhat.astype(x.dtype), x.shape))

    def backward(params, x, y, dy, *, key=None, train=False):
        del y, key, train
        x = _floating(x, params, param_dtype(dtype))
        xhat, inv_sigma, axes = forward(x)
        flat_xhat = ungrouped(xhat.astype(x.dtype), x.shape)
        grads = _affine_grads(params, flat_xhat, dy, tuple(range(x.ndim - 1)))
        dxhat = dy * _channels(params["scale"], dy.ndim) if use_scale else dy
        dx = _standardize_backward(grouped(dxhat)[0].astype(xhat.dtype), xhat, inv_sigma, axes)
        return grads, ungrouped(dx.astype(x.dtype), x.shape)

    return stateless(init, apply, backward, name=name)


def LayerNorm(
    *,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    dtype: jnp.dtype | None = None,
) -> Layer:
    """Layer normalization over the last (feature) axis of each example, as in Flax's
    ``LayerNorm`` default; the same in training and evaluation, no state.

    Args:
      epsilon: added to the variance.
      use_scale: learn the per-feature scale ``γ`` (params ``"scale"``, init 1).
      use_bias: learn the per-feature shift ``β`` (params ``"bias"``, init 0).
      dtype: parameter dtype; default float32 (float64 with ``jax_enable_x64``).
    """
    _check_options("LayerNorm", epsilon, use_scale, use_bias, dtype)
    return _per_example_norm(
        "LayerNorm()", lambda x: (x, (x.ndim - 1,)), lambda x, shape: x, epsilon, use_scale,
        use_bias, dtype)


def GroupNorm(
    num_groups: int = 32,
    *,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    dtype: jnp.dtype | None = None,
) -> Layer:
    """Group normalization: the channels (last axis) split into ``num_groups`` groups, each
    standardized over its channels and the spatial axes of each example (Wu & He, 2018);
    no state, the same in training and evaluation.

    Args:
      num_groups: groups of channels; must divide the number of channels.
      epsilon: added to the variance.
      use_scale: learn the per-channel scale ``γ`` (params ``"scale"``, init 1).
      use_bias: learn the per-channel shift ``β`` (params ``"bias"``, init 0).
      dtype: parameter dtype; default float32 (float64 with ``jax_enable_x64``).
    """
    num_groups = positive_int(num_groups, "num_groups", "GroupNorm")
    _check_options("GroupNorm", epsilon, use_scale, use_bias, dtype)
    name = f"GroupNorm({num_groups})"

    def check(input_shape):
        if input_shape[-1] % num_groups:
            raise ShapeError(f"{name}: {num_groups} groups do not divide the "
                             f"{input_shape[-1]} channels of shape {tuple(input_shape)}")

    def grouped(x):
        """(N, ..., C) -> (N, ..., G, C/G), standardized over all but N and G."""
        shaped = x.reshape(*x.shape[:-1], num_groups, x.shape[-1] // num_groups)
        return shaped, (*range(1, x.ndim - 1), x.ndim)

    return _per_example_norm(name, grouped, lambda x, shape: x.reshape(shape), epsilon,
                             use_scale, use_bias, dtype, check)

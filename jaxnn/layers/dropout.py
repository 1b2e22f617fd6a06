"""Dropout: zero each unit with probability ``rate`` in training, scale the rest by 1/(1-rate)."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxnn.layer import (
    Layer,
    Shape,
    at_least_float32,
    check_bool,
    check_key,
    check_single,
    is_real,
    param_dtype,
    stateless,
)


def Dropout(rate: float | jax.Array) -> Layer:
    """Inverted dropout; the identity when ``train=False``.

    Args:
      rate: the probability of *dropping* a unit (as in Flax, Keras and PyTorch; stax's
        ``rate`` was the keep probability). A Python number must lie in [0, 1); a traced
        array (a swept hyperparameter) is taken as given.

    Returns:
      A parameter-free `Layer`. ``apply(..., train=True)`` needs ``key``; ``backward`` with
      the same ``key`` rebuilds the same mask, so ``dx = dy ⊙ mask / (1 - rate)``. With a
      Python ``rate`` of 0 it is the identity in both modes and needs no key.
    """
    if not (is_real(rate) or isinstance(rate, jax.Array)):
        raise ValueError(f"Dropout: rate must be a number or a (traced) array, got {rate!r}")
    if isinstance(rate, numbers.Real) and not 0 <= rate < 1:
        raise ValueError(f"Dropout: rate is the probability of dropping, in [0, 1); got {rate}")
    name = f"Dropout({rate})" if isinstance(rate, numbers.Real) else "Dropout(<traced rate>)"
    identity = isinstance(rate, numbers.Real) and rate == 0  # in training too

    def init(key: jax.Array, input_shape: Shape):
        del key  # No parameters.
        check_single(name, input_shape)
        return tuple(input_shape), ()

    def scale(x, key):
        """The multiplier ``mask / (1 - rate)``, in ``x``'s (floating) dtype."""
        check_key(key, name, "apply(..., train=True)")
        # Drawn in float32 at least: bfloat16's uniform draws come in steps of 1/128, so a
        # rate below 1/128 dropped nothing, and others were rounded (0.01 dropped 0.0078).
        keep = 1 - jnp.asarray(rate, at_least_float32(x.dtype))
        mask = jax.random.bernoulli(key, keep, x.shape)
        return jnp.where(mask, (1 / keep).astype(x.dtype), jnp.zeros((), x.dtype))

    def floating(x):
        """An integer ``x`` in the default float: in its own dtype the rate rounded away."""
        return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(param_dtype())

    def apply(params, x, *, key=None, train=False):
        del params
        if not check_bool(train, "train", name) or identity:
            return x
        x = floating(x)
        return x * scale(x, key)

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, y
        if not check_bool(train, "train", name) or identity:
            return (), dy
        return (), dy * scale(floating(x), key)

    return stateless(init, apply, backward, name=name)

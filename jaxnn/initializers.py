"""Named parameter initializers: variance scaling (glorot, he, lecun), normal, zeros, ones.

A layer takes its initializer as a name (``"he_normal"``, ``"normal(0.02)"``) or as any
callable ``init(key, shape, dtype) -> array`` (``jax.nn.initializers`` work as they are).
Names are what configs use.

The named random initializers have the distributions of `jax.nn.initializers` (same
variance, same truncation), drawn so that a weight depends only on the key and its index,
not on the array's shape: output unit ``j`` (the last axis) draws from
``fold_in(key, j)``, and within a unit the ``i``-th value over the flattened leading axes
comes from counter ``i`` (threefry in its default partitionable mode). So the first ``k``
units of a ``(n, m)`` weight, and its first rows, are the same for every ``n`` and ``m``
up to the variance-scaling factor, which is what lets a sweep pack trials of different
widths into one program and draw their initial weights once (`VarianceScaling.stddev`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# The standard deviation of a unit normal truncated to [-2, 2] (as jax.nn uses).
_TRUNCATED_STD = 0.87962566103423978


def unit_draw(key: jax.Array, shape: tuple[int, ...], distribution: str,
              dtype: Any = jnp.float32) -> jax.Array:
    """Unit-variance draws of ``shape`` whose values do not depend on the shape.

    Args:
      key: a PRNG key.
      shape: the array's shape; the last axis holds the output units.
      distribution: "truncated_normal", "normal" or "uniform".
      dtype: a floating dtype.

    Returns:
      An array of zero mean and unit variance (before truncation's correction, which is
      applied) where ``[..., j]`` comes from ``fold_in(key, j)`` as described above.
    """
    shape = tuple(shape)
    if not shape:
        return unit_draw(key, (1,), distribution, dtype)[0]
    rows = math.prod(shape[:-1])

    def one_unit(unit_key):
        if distribution == "truncated_normal":
            return jax.random.truncated_normal(unit_key, -2, 2, (rows,), dtype) / _TRUNCATED_STD
        if distribution == "normal":
            return jax.random.normal(unit_key, (rows,), dtype)
        if distribution == "uniform":
            return jax.random.uniform(unit_key, (rows,), dtype, -math.sqrt(3), math.sqrt(3))
        raise ValueError(f"unknown distribution {distribution!r}")

    unit_keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(shape[-1]))
    return jax.vmap(one_unit, out_axes=-1)(unit_keys).reshape(shape)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) as `jax.nn.initializers` computes them: the last two axes times
    the receptive field (the leading axes of an HWIO kernel)."""
    if len(shape) < 2:
        size = shape[0] if shape else 1
        return size, size
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


class VarianceScaling(NamedTuple):
    """``stddev(shape) * unit_draw(...)``: the variance-scaling family of glorot, he, lecun.

    Attributes:
      scale: the variance numerator (1 for glorot and lecun, 2 for he).
      mode: "fan_in", "fan_out" or "fan_avg".
      distribution: "truncated_normal", "normal" or "uniform".
    """

    scale: float
    mode: str
    distribution: str

    def stddev(self, shape: tuple[int, ...]) -> float:
        """The standard deviation of the weights of an array of ``shape``."""
        fan_in, fan_out = _fans(tuple(shape))
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
        return math.sqrt(self.scale / fan[self.mode])

    def __call__(self, key: jax.Array, shape: tuple[int, ...],
                 dtype: Any = jnp.float32) -> jax.Array:
        return (unit_draw(key, shape, self.distribution, dtype)
                * jnp.asarray(self.stddev(shape), dtype))


class Normal(NamedTuple):
    """Zero-mean normal weights with a fixed standard deviation (shape-stable draws)."""

    std: float

    def stddev(self, shape: tuple[int, ...]) -> float:
        del shape  # Fixed.
        return self.std

    def __call__(self, key: jax.Array, shape: tuple[int, ...],
                 dtype: Any = jnp.float32) -> jax.Array:
        return unit_draw(key, shape, "normal", dtype) * jnp.asarray(self.std, dtype)


_NAMED: dict[str, Initializer] = {
    "glorot_uniform": VarianceScaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": VarianceScaling(1.0, "fan_avg", "truncated_normal"),
    "he_uniform": VarianceScaling(2.0, "fan_in", "uniform"),
    "he_normal": VarianceScaling(2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": VarianceScaling(1.0, "fan_in", "uniform"),
    "lecun_normal": VarianceScaling(1.0, "fan_in", "truncated_normal"),
    "zeros": jax.nn.initializers.zeros,
    "ones": jax.nn.initializers.ones,
}
_NORMAL = re.compile(r"normal\(\s*(?:std\s*=\s*)?([0-9.eE+-]+)\s*\)")

NAMES = (*_NAMED, "normal(STD)")


def get(initializer: str | Initializer, where: str | None = None) -> Initializer:
    """Resolves an initializer name (or passes a callable through).

    Args:
      initializer: one of ``glorot_uniform``, ``glorot_normal``, ``he_uniform``,
        ``he_normal``, ``lecun_uniform``, ``lecun_normal``, ``zeros``, ``ones``,
        ``normal(STD)`` (e.g. ``"normal(0.01)"``), or a callable
        ``init(key, shape, dtype)``.
      where: the argument it was given as, e.g. ``"Dense: w_init"``, to head errors.

    Returns:
      The initializer callable.

    Raises:
      ValueError: for an unknown name or a ``normal`` standard deviation that is not finite
        and > 0 (``normal(1e400)`` reads as inf).
      TypeError: for what is neither a name nor a callable.
    """
    head = "" if where is None else f"{where} must name an initializer; "
    if callable(initializer):
        return initializer
    if not isinstance(initializer, str):
        raise TypeError(f"{head}initializer must be a name or a callable, got {initializer!r}")
    name = initializer.strip()
    if name in _NAMED:
        return _NAMED[name]
    match = _NORMAL.fullmatch(name)
    if match:
        try:
            std = float(match.group(1))
        except ValueError:
            std = -1.0
        if 0 < std < math.inf:
            return Normal(std)
        raise ValueError(f"{head}initializer {initializer!r}: the standard deviation must be "
                         "finite and > 0")
    raise ValueError(f"{head}unknown initializer {initializer!r}; known: {', '.join(NAMES)}")


def normal(std: float) -> Initializer:
    """A zero-mean normal initializer with standard deviation ``std``."""
    return get(f"normal({std!r})")

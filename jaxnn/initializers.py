"""Named parameter initializers, resolved to `jax.nn.initializers`.

A layer takes its initializer as a name (``"he_normal"``, ``"normal(0.02)"``) or as any
callable ``init(key, shape, dtype) -> array``. Names are what configs use.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax

Initializer = Callable[..., jax.Array]

_NAMED: dict[str, Initializer] = {
    "glorot_uniform": jax.nn.initializers.glorot_uniform(),
    "glorot_normal": jax.nn.initializers.glorot_normal(),
    "he_uniform": jax.nn.initializers.he_uniform(),
    "he_normal": jax.nn.initializers.he_normal(),
    "lecun_uniform": jax.nn.initializers.lecun_uniform(),
    "lecun_normal": jax.nn.initializers.lecun_normal(),
    "zeros": jax.nn.initializers.zeros,
    "ones": jax.nn.initializers.ones,
}
_NORMAL = re.compile(r"normal\(\s*(?:std\s*=\s*)?([0-9.eE+-]+)\s*\)")

NAMES = (*_NAMED, "normal(STD)")


def get(initializer: str | Initializer) -> Initializer:
    """Resolves an initializer name (or passes a callable through).

    Args:
      initializer: one of ``glorot_uniform``, ``glorot_normal``, ``he_uniform``,
        ``he_normal``, ``lecun_uniform``, ``lecun_normal``, ``zeros``, ``ones``,
        ``normal(STD)`` (e.g. ``"normal(0.01)"``), or a callable
        ``init(key, shape, dtype)``.

    Returns:
      The initializer callable.

    Raises:
      ValueError: for an unknown name or a non-positive ``normal`` standard deviation.
    """
    if callable(initializer):
        return initializer
    if not isinstance(initializer, str):
        raise TypeError(f"initializer must be a name or a callable, got {initializer!r}")
    name = initializer.strip()
    if name in _NAMED:
        return _NAMED[name]
    match = _NORMAL.fullmatch(name)
    if match:
        try:
            std = float(match.group(1))
        except ValueError:
            std = -1.0
        if std > 0:
            return jax.nn.initializers.normal(stddev=std)
        raise ValueError(f"initializer {initializer!r}: the standard deviation must be > 0")
    raise ValueError(f"unknown initializer {initializer!r}; known: {', '.join(NAMES)}")


def normal(std: float) -> Initializer:
    """A zero-mean normal initializer with standard deviation ``std``."""
    return get(f"normal({std!r})")

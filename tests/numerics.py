"""Rounding tolerances: a multiple of the dtype's eps times the scale of the values compared.

Two computations of the same quantity (jit and eager, a fused rule and the plain formula,
Winograd and the direct convolution) round differently, and so does one computation on two
CPUs: XLA's float32 kernels split and fuse sums differently with AVX2 than with AVX-512. How
far apart they may be depends on the dtype and on the size of the values, never on a fixed
absolute number that one machine happens to meet. Here a tolerance is
``factor * eps(dtype) * scale``: eps is the gap after 1.0 (float32 2**-23, bfloat16 2**-7),
scale the size of the values (by default the largest |want| of each leaf), and factor the
rounding that accumulates on the way (a sum of K terms may be off by K eps of their scale at
worst, about sqrt(K) eps typically).

``DEFAULT_FACTOR`` is 64: the float32 results compared with it sum at most a few hundred terms
(sqrt(K) <= 17) and differ by at most 8 eps of their scale on AVX2, AVX and SSE4.2 alike
(measured with ``XLA_FLAGS=--xla_cpu_max_isa=...``), so 64 holds with 8x margin; a real bug (a
wrong element, a dropped term) is off by 1e-3 of the scale or more, about 8000 float32 eps.
Exactness claims are made in float64 at 1e-9 to 1e-12 and do not use this module.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_FACTOR = 64


def tolerance(dtype: Any, scale: float, factor: float = DEFAULT_FACTOR) -> float:
    """The rounding tolerance ``factor * eps(dtype) * scale``.

    Args:
      dtype: the floating dtype the values were computed in.
      scale: the size of the values, e.g. ``max |want|``.
      factor: how many eps of rounding the computation may accumulate.

    Returns:
      The tolerance as a Python float.
    """
    return factor * float(jnp.finfo(dtype).eps) * float(scale)


def assert_close(got: Any, want: Any, *, factor: float = DEFAULT_FACTOR, dtype: Any = None,
                 scale: float | None = None) -> None:
    """Asserts ``max |got - want| <= tolerance(dtype, scale, factor)`` leaf by leaf.

    Args:
      got: a pytree of arrays.
      want: the reference, a pytree of the same structure and leaf shapes.
      factor: how many eps of rounding the computation may accumulate.
      dtype: the dtype the values were computed in; by default the less precise of each
        leaf pair's dtypes.
      scale: the size of the values; by default each leaf's ``max |want|`` (so a leaf of
        zeros must be matched exactly).

    Raises:
      AssertionError: on another structure or shape, or naming the leaf, its error, the
        tolerance and the error in eps.
    """
    assert jax.tree.structure(got) == jax.tree.structure(want), (
        f"{jax.tree.structure(got)} != {jax.tree.structure(want)}")
    paths_and_wants, _ = jax.tree_util.tree_flatten_with_path(want)
    for (path, w), g in zip(paths_and_wants, jax.tree.leaves(got), strict=True):
        name = jax.tree_util.keystr(path) or "<root>"
        leaf_dtype = dtype or max(jnp.result_type(g), jnp.result_type(w),
                                  key=lambda d: jnp.finfo(d).eps)
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape, f"leaf {name}: shape {g.shape} != {w.shape}"
        leaf_scale = float(np.max(np.abs(w), initial=0.0)) if scale is None else scale
        error = float(np.max(np.abs(g - w), initial=0.0))
        tol = tolerance(leaf_dtype, leaf_scale, factor)
        eps = float(jnp.finfo(leaf_dtype).eps)
        assert error <= tol, (
            f"leaf {name}: max |got - want| = {error:.3g} > {tol:.3g} = {factor} eps("
            f"{jnp.dtype(leaf_dtype).name}) x scale {leaf_scale:.3g}; the error is "
            f"{error / (eps * leaf_scale) if leaf_scale else np.inf:.3g} eps of the scale")

"""``x @ w`` for `jaxnn.layers.Dense`, with a weight gradient that XLA's CPU backend runs fast.

The weight gradient of ``y = x @ w`` is ``x^T dy``: a matmul that contracts the batch axis,
the major axis of both operands. XLA's CPU backend hands that contraction to Eigen, while
a matmul that contracts the first operand's minor axis (``(in, batch) @ (batch, out)``)
goes to YNNPACK, which was faster even counting the copy that makes ``x^T``: 295 against
340 µs for a (128, 784) input and 512 outputs, and 1.4-4.8% of workload A's train step
(`experiments/benchmark.py`). XLA folds a plain transpose back into the contraction, so
the copy sits behind `lax.optimization_barrier`.

`matmul` puts that weight gradient into a custom JVP, whose weight term JAX transposes into
``barrier(x^T) @ dy``; the forward pass is the plain ``x @ w``. Being a JVP, not a VJP,
it keeps forward-mode and higher-order derivatives. Other backends and dtypes keep the
plain matmul (`fast_weight_gradient`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def fast_weight_gradient(x: jax.Array) -> bool:
    """Whether ``x``'s weight gradients go through a materialized ``x^T``: on CPU, float32."""
    return jax.default_backend() == "cpu" and x.dtype == jnp.float32


def weight_gradient(x: jax.Array, dy: jax.Array) -> jax.Array:
    """``x^T dy`` for ``x`` of shape (batch, in) and ``dy`` of shape (batch, out)."""
    if fast_weight_gradient(x):
        return lax.optimization_barrier(x.T) @ dy
    return x.T @ dy


@jax.custom_jvp
def _matmul_transposed_x(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


@_matmul_transposed_x.defjvp
def _matmul_transposed_x_jvp(primals, tangents):
    x, w = primals
    x_dot, w_dot = tangents
    # Transposing ``barrier(x^T).T @ w_dot`` in w_dot gives ``barrier(x^T) @ dy``.
    x_transposed = lax.optimization_barrier(x.T)
    return x @ w, x_dot @ w + x_transposed.T @ w_dot


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for ``x`` of shape (batch, in), differentiable in both arguments."""
    if fast_weight_gradient(x):
        return _matmul_transposed_x(x, w)
    return x @ w

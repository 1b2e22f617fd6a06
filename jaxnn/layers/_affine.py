"""``x @ w + b`` for `jaxnn.layers.Dense`, with parameter gradients that XLA's CPU backend
runs fast.

The weight gradient of ``y = x @ w + b`` is ``x^T dy``: a matmul that contracts the batch
axis, the major axis of both operands. XLA's CPU backend hands that contraction to Eigen,
while one that contracts the first operand's minor axis (``(in, batch) @ (batch, out)``)
goes to YNNPACK, which was faster even counting the copy that makes ``x^T``. XLA folds a
plain transpose back into the contraction, so the copy sits behind
`lax.optimization_barrier`. The copy also carries a row of ones, so that the same matmul
gives the bias gradient ``sum_batch dy`` as its last row, instead of a separate reduction.
On workload A's train step (`experiments/benchmark.py`, 2 CPU cores) the copy gained
1.4-4.8% and the row of ones another 2.5-4.3%.

`affine` puts this into a custom JVP, whose parameter term JAX transposes into
``[x^T; 1] @ dy``; the forward pass is the plain ``x @ w + b``. Being a JVP, not a VJP, it
keeps forward-mode and higher-order derivatives. `parameter_gradients` is the same product
for Dense's manual rule. Other backends and dtypes keep the plain formulas (`applies`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def applies(x: jax.Array, w: jax.Array) -> bool:
    """Whether the gradients go through a materialized ``x^T``: on CPU, in float32."""
    return (jax.default_backend() == "cpu"
            and x.dtype == jnp.float32 and w.dtype == jnp.float32)


def _transposed_with_ones(x: jax.Array, with_ones: bool) -> jax.Array:
    """``x^T`` (in, batch), with a last row of ones when ``with_ones``, as a real copy."""
    rows = [x.T, jnp.ones((1, x.shape[0]), x.dtype)] if with_ones else [x.T]
    return lax.optimization_barrier(jnp.concatenate(rows))


def _as_row(b: jax.Array, features: int) -> jax.Array:
    """A bias of shape (features,) or () (shared by every unit) as a (1, features) row."""
    return jnp.broadcast_to(b, (1, features))


@jax.custom_jvp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


@_matmul.defjvp
def _matmul_jvp(primals, tangents):
    x, w = primals
    x_dot, w_dot = tangents
    # Transposing ``copy(x^T).T @ w_dot`` in w_dot gives ``copy(x^T) @ dy``.
    x_transposed = _transposed_with_ones(x, with_ones=False)
    return x @ w, x_dot @ w + x_transposed.T @ w_dot


@jax.custom_jvp
def _affine(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    return x @ w + _as_row(b, w.shape[1])


@_affine.defjvp
def _affine_jvp(primals, tangents):
    x, w, b = primals
    x_dot, w_dot, b_dot = tangents
    # Transposing ``[x^T; 1]^T @ [w_dot; b_dot]`` in (w_dot, b_dot) gives ``[x^T; 1] @ dy``,
    # split into dw and db (summed to a scalar for a shared bias).
    x_transposed = _transposed_with_ones(x, with_ones=True)
    params_dot = jnp.concatenate([w_dot, _as_row(b_dot, w.shape[1])])
    return x @ w + _as_row(b, w.shape[1]), x_dot @ w + x_transposed.T @ params_dot


def affine(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """``x @ w + b`` for ``x`` of shape (batch, in), differentiable in every argument.

    Args:
      x: inputs, (batch, in).
      w: weights, (in, out).
      b: bias, (out,) or () for one shared by every unit; None for none.
    """
    if not applies(x, w):
        return x @ w if b is None else x @ w + _as_row(b, w.shape[1])
    return _matmul(x, w) if b is None else _affine(x, w, b)


def parameter_gradients(
    x: jax.Array, dy: jax.Array, bias_shape: tuple[int, ...] | None
) -> tuple[jax.Array, jax.Array | None]:
    """``(x^T dy, sum_batch dy)`` for ``x`` (batch, in) and ``dy`` (batch, out): the weight
    and bias gradients of `affine`, the bias one shaped ``bias_shape`` (None: no bias)."""
    if not applies(x, dy):
        dw = x.T @ dy
        db = None if bias_shape is None else jnp.sum(dy, axis=0)
    else:
        # The copy waits for dy: left free, XLA ran it beside the forward pass's matmuls,
        # and workload A's manual step took 1.15x as long.
        x, dy = lax.optimization_barrier((x, dy))
        both = _transposed_with_ones(x, with_ones=bias_shape is not None) @ dy
        dw, db = (both, None) if bias_shape is None else (both[:-1], both[-1])
    if db is not None and bias_shape == ():
        db = jnp.sum(db)
    return dw, db

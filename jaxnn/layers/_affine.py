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


def applies(*arrays: jax.Array) -> bool:
    """Whether the gradients go through a materialized ``x^T``: on CPU, all float32."""
    return jax.default_backend() == "cpu" and all(a.dtype == jnp.float32 for a in arrays)


def _plain(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """``x @ w + b``, a bias of shape (out,) or () (shared by every unit) broadcast as a row."""
    y = x @ w
    return y if b is None else y + jnp.broadcast_to(b, (1,) * (y.ndim - 1) + y.shape[-1:])


def _transposed(x: jax.Array, with_ones: bool) -> jax.Array:
    """``x^T`` (in, batch), with a last row of ones when ``with_ones``, as a real copy."""
    rows = [x.T, jnp.ones((1, x.shape[0]), x.dtype)] if with_ones else [x.T]
    return lax.optimization_barrier(jnp.concatenate(rows))


@jax.custom_jvp
def _affine(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
    return _plain(x, w, b)


@_affine.defjvp
def _affine_jvp(primals, tangents):
    x, w, b = primals
    x_dot, w_dot, b_dot = tangents
    # Transposing ``[x^T; 1]^T @ [w_dot; b_dot]`` in (w_dot, b_dot) gives ``[x^T; 1] @ dy``,
    # split into dw and db (summed to a scalar for a shared bias). No bias: ``x^T @ dy``.
    params_dot = w_dot if b is None else jnp.concatenate(
        [w_dot, jnp.broadcast_to(b_dot, (1, w.shape[1]))])
    x_transposed = _transposed(x, with_ones=b is not None)
    return _plain(x, w, b), x_dot @ w + x_transposed.T @ params_dot


def affine(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """``x @ w + b`` for ``x`` of shape (batch, in), differentiable in every argument.

    Args:
      x: inputs, (batch, in).
      w: weights, (in, out).
      b: bias, (out,) or () for one shared by every unit; None for none.
    """
    if x.ndim == 2 and applies(x, w):
        return _affine(x, w, b)
    return _plain(x, w, b)  # also for inputs of other ranks, which Dense's init refuses


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
        both = _transposed(x, with_ones=bias_shape is not None) @ dy
        dw, db = (both, None) if bias_shape is None else (both[:-1], both[-1])
    if db is not None and bias_shape == ():
        db = jnp.sum(db)
    return dw, db

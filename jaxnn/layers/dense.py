"""Dense (fully connected) layer and its manual delta rule.

jaxnn maps a batch of row vectors: ``y = x @ W + b`` with ``x`` of shape (m, n_in) and
``W`` of shape (n_in, n_out). The classic notation ``z^l = W^l a^{l-1} + b^l`` on column
vectors uses ``W^l`` of shape (n_l, n_{l-1}); it is the same map transposed. With the
loss already averaged over the batch (so ``dy`` carries the 1/m), the delta rule reads

    dW = x^T dy        (the seeds' ``(a^{l-1})^T delta^l / m``)
    db = sum_batch dy  (the seeds' ``sum delta^l / m``)
    dx = dy W^T        (the seeds' ``delta^{l+1} (W^{l+1})^T``, before ``⊙ g'(z^l)``)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnn import initializers
from jaxnn.layer import (
    Layer,
    Shape,
    ShapeError,
    check_applied,
    check_bool,
    check_key,
    check_rank,
    float_dtype,
    param_dtype,
    positive_int,
    stateless,
)
from jaxnn.layers import _affine


def Dense(
    features: int,
    *,
    use_bias: bool = True,
    shared_bias: bool = False,
    w_init: str | initializers.Initializer = "lecun_normal",
    b_init: str | initializers.Initializer = "zeros",
    dtype: jnp.dtype | None = None,
) -> Layer:
    """A fully connected layer ``y = x @ w + b`` on inputs of shape (batch, in_features).

    Args:
      features: the number of output units.
      use_bias: whether to add the bias ``b``.
      shared_bias: one scalar bias for all units instead of one per unit (as in the classic
        2-2-2 worked example, where both hidden units share ``b1``).
      w_init: initializer of ``w`` (shape (in, out)); a name or a callable.
      b_init: initializer of ``b`` (shape (out,)).
      dtype: parameter dtype; default float32 (float64 with ``jax_enable_x64``).

    Returns:
      A `Layer` with params ``{"w": (in, out), "b": (out,)}`` (``"b"`` of shape () when
      shared, absent without bias).
    """
    features = positive_int(features, "features", "Dense")
    use_bias = check_bool(use_bias, "use_bias", "Dense")
    shared_bias = check_bool(shared_bias, "shared_bias", "Dense")
    dtype = float_dtype(dtype, "dtype", "Dense")
    w_initializer = initializers.get(w_init, "Dense: w_init")
    b_initializer = initializers.get(b_init, "Dense: b_init")
    bias_shape = () if shared_bias else (features,)
    name = f"Dense({features})"
    if not use_bias or shared_bias:
        name = f"Dense({features}, {'shared_bias=True' if use_bias else 'use_bias=False'})"

    def init(key: jax.Array, input_shape: Shape):
        check_key(key, name, "init")
        check_rank(name, input_shape, 2, "(batch, features)", "add Flatten() before Dense")
        in_features = input_shape[-1]
        if in_features is None:
            raise ShapeError(f"{name} needs a known number of input features, got {input_shape}")
        w_key, b_key = jax.random.split(key)
        dtype_ = param_dtype(dtype)
        params = {"w": w_initializer(w_key, (in_features, features), dtype_)}
        if use_bias:
            params["b"] = b_initializer(b_key, bias_shape, dtype_)
        return (input_shape[0], features), params

    def apply(params, x, *, key=None, train=False):
        del key, train  # Deterministic.
        check_applied(name, x, channels=params["w"].shape[0])  # any leading axes
        return _affine.affine(x, params["w"], params["b"] if use_bias else None)

    def backward(params, x, y, dy, *, key=None, train=False):
        del y, key, train  # The rule needs only x and dy.
        # Rows of any leading axes, as ``x @ w`` maps them: a single example (under
        # ``jax.vmap``) or axes that init's (batch, features) did not foresee.
        dw, db = _affine.parameter_gradients(x.reshape(-1, x.shape[-1]),
                                             dy.reshape(-1, dy.shape[-1]),
                                             bias_shape if use_bias else None)
        grads = {"w": dw} if db is None else {"w": dw, "b": db}
        return grads, dy @ params["w"].T

    return stateless(init, apply, backward, name=name)

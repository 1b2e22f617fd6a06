"""Conv2D on NHWC inputs with HWIO kernels, and its manual rule.

For ``y = x ⋆ W + b`` (cross-correlation, stride ``s``, padding ``(lo, hi)``):

* ``dW`` is the correlation of the (padded) input with ``dy``: ``dW[i, j, c, o] =
  sum_{n, a, b} x_pad[n, i + s a, j + s b, c] dy[n, a, b, o]`` -- a convolution whose
  "batch" is the input channel and whose kernel is ``dy`` dilated by the stride;
* ``dx`` is the full correlation of ``dy`` (dilated by the stride) with the spatially flipped
  filter, ``in``/``out`` channels swapped, padded by ``k - 1 - lo`` so that the result has
  the input's size;
* ``db = sum_{n, a, b} dy[n, a, b, :]``.

On CPU, a float32 or float64 3x3 stride-1 convolution with at least
`_winograd.MIN_CHANNELS` input channels runs as Winograd's F(2x2, 3x3) instead, forward and
rule (`jaxnn.layers._winograd`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxnn import initializers
from jaxnn.layer import Layer, Shape, param_dtype, with_rule_gradient
from jaxnn.layers import _spatial, _winograd

_NHWC = ("NHWC", "HWIO", "NHWC")


def _filter_gradient(x, dy, window, strides, pads, out_hw):
    """``dW[i, j] = x_pad[:, i::s, j::s, :]^T dy``: one matmul per filter offset.

    Written as matmuls over the strided input views rather than as a convolution with the
    batch as its feature axis, which XLA's CPU backend runs 3-4x slower. With few input
    channels the views are stacked, offset-and-channel major, into one (k*cin, N) matrix and
    contracted with dy in one matmul (1.8x faster than an einsum over the stacked views
    for a 1-channel 28x28 input: `experiments/profile_step.py` showed its transposes).
    """
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    views = _spatial.window_slices(padded, window, strides, out_hw)
    cin, cout = x.shape[-1], dy.shape[-1]
    flat_dy = dy.reshape(-1, cout)
    if cin < 8:
        stacked = jnp.stack([view.reshape(-1, cin) for view in views])  # (k, N, cin)
        rows = jnp.moveaxis(stacked, -1, 1).reshape(len(views) * cin, -1)
        return (rows @ flat_dy).reshape(*window, cin, cout)
    return jnp.stack([view.reshape(-1, cin).T @ flat_dy for view in views]).reshape(
        *window, cin, cout)


def Conv2D(
    features: int,
    kernel_size: int | tuple[int, int] = 3,
    *,
    stride: int | tuple[int, int] = 1,
    padding: _spatial.Padding = "SAME",
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "lecun_normal",
    b_init: str | initializers.Initializer = "zeros",
    dtype: jnp.dtype | None = None,
) -> Layer:
    """A 2-D convolution (cross-correlation) over NHWC inputs.

    Args:
      features: the number of output channels (filters).
      kernel_size: filter height and width (an int for square filters).
      stride: step between filter positions (an int or (sh, sw)).
      padding: "SAME", "VALID", an int of zeros on every side, or ((top, bottom),
        (left, right)).
      use_bias: whether to add one bias per output channel.
      w_init: initializer of the HWIO kernel ``w``; a name or a callable.
      b_init: initializer of ``b`` (shape (features,)).
      dtype: parameter dtype; default float32 (float64 with ``jax_enable_x64``).

    Returns:
      A `Layer` with params ``{"w": (kh, kw, in, features), "b": (features,)}``.
    """
    if not isinstance(features, int) or isinstance(features, bool) or features < 1:
        raise ValueError(f"Conv2D: features must be a positive int, got {features!r}")
    window = _spatial.pair(kernel_size, "kernel_size", "Conv2D")
    strides = _spatial.pair(stride, "stride", "Conv2D")
    padding = _spatial.check_padding(padding, "Conv2D")
    w_initializer = initializers.get(w_init)
    b_initializer = initializers.get(b_init)
    name = f"Conv2D({features}, {window}, stride={strides}, padding={padding!r})"

    def pads_for(in_hw):
        return _spatial.explicit_pads(padding, in_hw, window, strides)

    def init(key: jax.Array, input_shape: Shape):
        _, out_hw = _spatial.infer_nhwc(name, input_shape, window, strides, padding)
        w_key, b_key = jax.random.split(key)
        dtype_ = param_dtype(dtype)
        params = {"w": w_initializer(w_key, (*window, input_shape[3], features), dtype_)}
        if use_bias:
            params["b"] = b_initializer(b_key, (features,), dtype_)
        return (input_shape[0], *out_hw, features), params

    def winograd(x):
        """Whether this call runs as Winograd's F(2x2, 3x3), on CPU only: XLA's GPU and TPU
        convolutions are already fast there, and F(2x2, 3x3) rounds differently."""
        return jax.default_backend() == "cpu" and _winograd.applies(window, strides, x)

    def apply(params, x, *, key=None, train=False):
        del key, train  # Deterministic.
        pads = pads_for(x.shape[1:3])
        if winograd(x):
            y = _winograd.conv(x, params["w"], pads)
        else:
            y = lax.conv_general_dilated(x, params["w"], strides, pads, dimension_numbers=_NHWC)
        if use_bias:
            y = y + params["b"][None, None, None, :]
        return y

    def backward(params, x, y, dy, *, key=None, train=False):
        del y, key, train
        in_hw, out_hw = x.shape[1:3], dy.shape[1:3]
        pads = pads_for(in_hw)
        grads = {}
        if use_bias:
            grads["b"] = jnp.sum(dy, axis=(0, 1, 2))
        if winograd(x):
            dx, grads["w"] = _winograd.gradients(x, params["w"], dy, pads)
            return grads, dx
        grads["w"] = _filter_gradient(x, dy, window, strides, pads, out_hw)
        # Extent of the stride-dilated dy along each spatial axis.
        dilated = [(o - 1) * s + 1 for o, s in zip(out_hw, strides, strict=True)]
        dx_pads = [
            (k - 1 - lo, n - d + lo)
            for n, k, d, (lo, _) in zip(in_hw, window, dilated, pads, strict=True)
        ]
        dx = lax.conv_general_dilated(
            dy, params["w"][::-1, ::-1], (1, 1), dx_pads, lhs_dilation=strides,
            dimension_numbers=("NHWC", "HWOI", "NHWC"),
        )
        return grads, dx

    return with_rule_gradient(Layer(init, apply, backward, name=name))

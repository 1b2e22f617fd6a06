"""Conv2DTranspose on NHWC inputs with HWIO kernels, and its manual rule.

The transposed ("fractionally strided") convolution of ``lax.conv_transpose`` and Flax's
``nn.ConvTranspose`` (whose kernel is not flipped): the input is dilated by the stride
(``s - 1`` zeros between neighbours), padded by ``(lo, hi)``, and correlated with the
filter at stride 1. Along one axis, with ``z`` the dilated, padded input
(``z[lo + s m] = x[m]``, zero elsewhere):

    y[a, o] = sum_{i, c} z[a + i, c] w[i, c, o] + b[o]

and the output length is ``(n - 1) s + 1 + lo + hi - k + 1``. "SAME" padding gives ``n s``
and "VALID" gives ``(n - 1) s + max(k, s)`` (``(n - 1) s + k`` when ``k >= s``).

The rule, with ``dy`` padded by ``k - 1 - lo`` before and ``k - 1 - hi`` after (a negative
amount crops) into ``dy_p`` (so ``dy_p[s m + k - 1 - i] = dy[lo + s m - i]``):

* ``dx[m, c] = sum_{i, o} dy_p[s m + i, o] w[k - 1 - i, c, o]``: the ordinary stride-``s``
  correlation of ``dy`` with the flipped filter, ``in``/``out`` swapped;
* ``dW[i, c, o] = sum_{n, a} z[n, a + i, c] dy[n, a, o]``, the correlation of the dilated
  input with ``dy``, summed only where ``z`` is nonzero: ``sum_{n, m} x[n, m, c]
  dy_p[n, s m + k - 1 - i, o]``, one matmul per filter offset;
* ``db[o] = sum_{n, a} dy[n, a, o]``.

In 2-D the same holds along height and width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

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
    positive_int,
    stateless,
    with_rule_gradient,
)
from jaxnn.layers import _spatial

_NHWC = _spatial.NHWC


def transpose_pads(k: int, s: int, padding: str) -> tuple[int, int]:
    """``(lo, hi)`` padding of the dilated input for "SAME" or "VALID", as
    ``lax.conv_transpose`` computes it (its ``_conv_transpose_padding``)."""
    if padding == "SAME":
        total = k + s - 2
        lo = k - 1 if s > k - 1 else -(-total // 2)
    else:  # "VALID"
        total = k + s - 2 + max(k - s, 0)
        lo = k - 1
    return lo, total - lo


def Conv2DTranspose(
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
    """A 2-D transposed convolution over NHWC inputs: ``lax.conv_transpose`` plus a bias.

    Upsamples by the stride: with "SAME" padding an (H, W) input gives (H s_h, W s_w). See
    the module docstring for the forward pass and the rule.

    Args:
      features: the number of output channels.
      kernel_size: filter height and width (an int for square filters).
      stride: the upsampling factor, the dilation of the input (an int or (sh, sw)).
      padding: "SAME" (output ``n s``), "VALID" (output ``(n - 1) s + max(k, s)``), or
        explicit padding of the dilated input as in ``lax.conv_transpose``: an int for every
        side or ((top, bottom), (left, right)).
      use_bias: whether to add one bias per output channel.
      w_init: initializer of the HWIO kernel ``w``; a name or a callable.
      b_init: initializer of ``b`` (shape (features,)).
      dtype: parameter dtype; default float32 (float64 with ``jax_enable_x64``).

    Returns:
      A `Layer` with params ``{"w": (kh, kw, in, features), "b": (features,)}``.

    Raises:
      ValueError: for a non-positive ``features``, kernel size or stride, an unknown
        padding or initializer.
    """
    features = positive_int(features, "features", "Conv2DTranspose")
    args = _spatial.conv_arguments("Conv2DTranspose", kernel_size, stride, padding, w_init,
                                   b_init)
    use_bias = check_bool(use_bias, "use_bias", "Conv2DTranspose")
    dtype = float_dtype(dtype, "dtype", "Conv2DTranspose")
    window, strides, padding = args.window, args.strides, args.padding
    name = f"Conv2DTranspose({features}, {window}, stride={strides}, padding={padding!r})"
    if isinstance(padding, str):
        pads = tuple(transpose_pads(k, s, padding) for k, s in zip(window, strides, strict=True))
    elif isinstance(padding, int):
        pads = ((padding, padding), (padding, padding))
    else:
        pads = padding

    def init(key: jax.Array, input_shape: Shape):
        check_key(key, name, "init")
        check_rank(name, input_shape, 4, _spatial.NHWC_LAYOUT)
        if any(dim is None for dim in input_shape[1:]):
            raise ShapeError(f"{name} needs known height, width and channels, got "
                             f"{tuple(input_shape)}")
        in_hw = tuple(input_shape[1:3])
        padded = tuple((n - 1) * s + 1 + lo + hi
                       for n, s, (lo, hi) in zip(in_hw, strides, pads, strict=True))
        if any(p < k for p, k in zip(padded, window, strict=True)):
            raise ShapeError(
                f"{name}: kernel {window} does not fit the stride-dilated, padded input "
                f"{padded} (input {in_hw}, stride {strides}, padding {pads})"
            )
        out_hw = tuple(p - k + 1 for p, k in zip(padded, window, strict=True))
        params = _spatial.conv_params(key, args, input_shape[3], features, use_bias, dtype)
        return (input_shape[0], *out_hw, features), params

    def apply(params, x, *, key=None, train=False):
        del key, train  # Deterministic.
        check_applied(name, x, 4, _spatial.NHWC_LAYOUT, params["w"].shape[2])
        x, w = _spatial.promoted(x, params["w"])
        y = lax.conv_general_dilated(x, w, (1, 1), pads, lhs_dilation=strides,
                                     dimension_numbers=_NHWC)
        if use_bias:
            y = y + params["b"][None, None, None, :]
        return y

    def backward(params, x, y, dy, *, key=None, train=False):
        del y, key, train
        x, w = _spatial.promoted(x, params["w"])
        grads = {}
        if use_bias:
            grads["b"] = jnp.sum(dy, axis=(0, 1, 2))
        # dy_p[s m + k - 1 - i] = dy[lo + s m - i]: the strided windows of dy_p line up
        # with the input cells; its extent is (n - 1) s + k.
        dy_p = lax.pad(dy, jnp.zeros((), dy.dtype), (
            (0, 0, 0), *((k - 1 - lo, k - 1 - hi, 0) for k, (lo, hi) in zip(window, pads,
                                                                            strict=True)),
            (0, 0, 0)))
        dx = lax.conv_general_dilated(dy_p, w[::-1, ::-1], strides, ((0, 0), (0, 0)),
                                      dimension_numbers=("NHWC", "HWOI", "NHWC"))
        views = _spatial.window_slices(dy_p, window, strides, x.shape[1:3])
        flat_x = x.reshape(-1, x.shape[-1])
        dw = jnp.stack([flat_x.T @ view.reshape(-1, dy.shape[-1]) for view in views])
        grads["w"] = dw.reshape(w.shape)[::-1, ::-1]
        return grads, dx

    return with_rule_gradient(stateless(init, apply, backward, name=name))

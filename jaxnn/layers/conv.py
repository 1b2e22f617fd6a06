"""Conv2D on NHWC inputs with HWIO kernels, and its manual rule.

For ``y = x ⋆ W + b`` (cross-correlation, stride ``s``, padding ``(lo, hi)``):

* ``dW`` is the correlation of the (padded) input with ``dy``: ``dW[i, j, c, o] =
  sum_{n, a, b} x_pad[n, i + s a, j + s b, c] dy[n, a, b, o]`` -- a convolution whose
  "batch" is the input channel and whose kernel is ``dy`` dilated by the stride;
* ``dx`` is the full correlation of ``dy`` (dilated by the stride) with the spatially flipped
  filter, ``in``/``out`` channels swapped, padded by ``k - 1 - lo`` so that the result has
  the input's size;
* ``db = sum_{n, a, b} dy[n, a, b, :]``.

On CPU, in float32 and float64, a 3x3 stride-1 convolution with at least
`_winograd.MIN_CHANNELS` input channels (`LARGE_MIN_CHANNELS` on images of at least
`LARGE_SIDE` x `LARGE_SIDE`) runs as Winograd's F(2x2, 3x3)
(`jaxnn.layers._winograd`), forward and rule, and every other one as a matmul over its
input's patches (`jaxnn.layers._im2col`); 16-bit ones as XLA's convolution.

Conv1D on (N, L, C) inputs is Conv2D with a (1, k) filter on the (N, 1, L, C) view, and its
rule is Conv2D's on that view.
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
    is_integer,
    param_dtype,
    positive_int,
    stateless,
    with_rule_gradient,
)
from jaxnn.layers import _im2col, _spatial, _winograd

_NHWC = _spatial.NHWC


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
    features = positive_int(features, "features", "Conv2D")
    args = _spatial.conv_arguments("Conv2D", kernel_size, stride, padding, w_init, b_init)
    use_bias = check_bool(use_bias, "use_bias", "Conv2D")
    dtype = float_dtype(dtype, "dtype", "Conv2D")
    window, strides, padding = args.window, args.strides, args.padding
    name = f"Conv2D({features}, {window}, stride={strides}, padding={padding!r})"

    def pads_for(in_hw):
        return _spatial.explicit_pads(padding, in_hw, window, strides)

    def init(key: jax.Array, input_shape: Shape):
        check_key(key, name, "init")
        _, out_hw = _spatial.infer_nhwc(name, input_shape, window, strides, padding)
        params = _spatial.conv_params(key, args, input_shape[3], features, use_bias, dtype)
        return (input_shape[0], *out_hw, features), params

    def lowering(x) -> str:
        """"im2col", "winograd" or "direct" (XLA's convolution) for this call. Only on CPU:
        XLA's GPU and TPU convolutions are already fast, and F(2x2, 3x3) rounds differently."""
        if jax.default_backend() != "cpu":
            return "direct"
        if _winograd.applies(window, strides, x):
            return "winograd"
        return "im2col" if _im2col.applies(x) else "direct"

    def apply(params, x, *, key=None, train=False):
        del key, train  # Deterministic.
        check_applied(name, x, 4, _spatial.NHWC_LAYOUT, params["w"].shape[2])
        _spatial.infer_nhwc(name, x.shape, window, strides, padding)  # the window fits
        x, w = _spatial.promoted(x, params["w"])
        pads = pads_for(x.shape[1:3])
        how = lowering(x)
        if how == "im2col":
            y = _im2col.conv(x, w, strides, pads)
        elif how == "winograd":
            y = _winograd.conv(x, w, pads)
        else:
            y = lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)
        if use_bias:
            y = y + params["b"][None, None, None, :]
        return y

    def backward(params, x, y, dy, *, key=None, train=False):
        del y, key, train
        x, w = _spatial.promoted(x, params["w"])
        params = {**params, "w": w}
        in_hw, out_hw = x.shape[1:3], dy.shape[1:3]
        pads = pads_for(in_hw)
        grads = {}
        if use_bias:
            grads["b"] = jnp.sum(dy, axis=(0, 1, 2))
        how = lowering(x)
        if how == "im2col":
            dx, grads["w"] = _im2col.gradients(x, params["w"], dy, strides, pads)
            return grads, dx
        if how == "winograd":
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

    return with_rule_gradient(stateless(init, apply, backward, name=name))


def _one_positive_int(value, what: str, layer: str) -> int:
    """``value`` (or the one entry of a 1-sequence) as a positive int."""
    single = value[0] if isinstance(value, list | tuple) and len(value) == 1 else value
    if isinstance(single, list | tuple):
        raise ValueError(f"{layer}: {what} must be a positive int, got {value!r}")
    return positive_int(single, what, layer)


def _check_padding_1d(padding, layer: str):
    """A 1-D padding spec: "SAME", "VALID", an int >= 0 or a pair (lo, hi) of them."""
    if isinstance(padding, str) or is_integer(padding):
        return _spatial.check_padding(padding, layer)
    pads = tuple(padding) if isinstance(padding, list | tuple) else ()
    if len(pads) != 2 or not all(_spatial.is_pad(p) for p in pads):
        raise ValueError(
            f'{layer}: padding must be "SAME", "VALID", an int or a pair (lo, hi) of ints >= 0; '
            f"got {padding!r}"
        )
    return tuple(int(p) for p in pads)


def Conv1D(
    features: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: str | int | tuple[int, int] = "SAME",
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "lecun_normal",
    b_init: str | initializers.Initializer = "zeros",
    dtype: jnp.dtype | None = None,
) -> Layer:
    """A 1-D convolution (cross-correlation) over (batch, length, channels) inputs.

    ``y[n, a, o] = sum_{i, c} x_pad[n, s a + i, c] w[i, c, o] + b[o]``; the output length is
    ``(L + lo + hi - k) // s + 1``. It runs as `Conv2D` with the (1, k) filter ``w[None]`` on
    the (N, 1, L, C) view ``x[:, None]``, and its rule is Conv2D's on that view:

    * ``dw[i, c, o] = sum_{n, a} x_pad[n, s a + i, c] dy[n, a, o]``;
    * ``dx`` is the full correlation of ``dy`` (dilated by the stride) with the flipped
      filter, ``in``/``out`` swapped, cropped to the input's length;
    * ``db[o] = sum_{n, a} dy[n, a, o]``.

    Args:
      features: the number of output channels (filters).
      kernel_size: the filter length (an int, or a 1-tuple).
      stride: step between filter positions (an int, or a 1-tuple).
      padding: "SAME", "VALID", an int of zeros at both ends, or (lo, hi).
      use_bias: whether to add one bias per output channel.
      w_init: initializer of the kernel ``w``; a name or a callable.
      b_init: initializer of ``b`` (shape (features,)).
      dtype: parameter dtype; default float32 (float64 with ``jax_enable_x64``).

    Returns:
      A `Layer` with params ``{"w": (k, in, features), "b": (features,)}``.

    Raises:
      ValueError: for a non-positive ``features``, ``kernel_size`` or ``stride``, an unknown
        padding or initializer.
    """
    features = positive_int(features, "features", "Conv1D")
    k = _one_positive_int(kernel_size, "kernel_size", "Conv1D")
    s = _one_positive_int(stride, "stride", "Conv1D")
    padding = _check_padding_1d(padding, "Conv1D")
    use_bias = check_bool(use_bias, "use_bias", "Conv1D")
    dtype = float_dtype(dtype, "dtype", "Conv1D")
    w_initializer = initializers.get(w_init, "Conv1D: w_init")
    b_initializer = initializers.get(b_init, "Conv1D: b_init")
    name = f"Conv1D({features}, {k}, stride={s}, padding={padding!r})"
    # The (N, 1, L, C) view: a height of 1 with filter height 1 needs no padding, whatever
    # the string; explicit padding applies to the length (width) only.
    view_padding = padding if isinstance(padding, str) else (
        ((0, 0), (padding, padding)) if isinstance(padding, int) else ((0, 0), padding))
    view = Conv2D(features, (1, k), stride=(1, s), padding=view_padding, use_bias=use_bias,
                  dtype=dtype).reference  # The plain layer, whose backward is the rule.

    def init(key: jax.Array, input_shape: Shape):
        check_key(key, name, "init")
        check_rank(name, input_shape, 3, "(batch, length, channels)")
        if any(dim is None for dim in input_shape[1:]):
            raise ShapeError(f"{name} needs known length and channels, got {tuple(input_shape)}")
        length = input_shape[1]
        if isinstance(padding, str):
            (lo, hi), = lax.padtype_to_pads((length,), (k,), (s,), padding)
        else:
            lo, hi = (padding, padding) if isinstance(padding, int) else padding
        out_length = (length + lo + hi - k) // s + 1
        if out_length < 1:
            raise ShapeError(f"{name}: kernel {k} does not fit the padded input length "
                             f"{length + lo + hi} (input length {length}, padding {(lo, hi)})")
        w_key, b_key = jax.random.split(key)
        dtype_ = param_dtype(dtype)
        params = {"w": w_initializer(w_key, (k, input_shape[2], features), dtype_)}
        if use_bias:
            params["b"] = b_initializer(b_key, (features,), dtype_)
        return (input_shape[0], out_length, features), params

    def as_view(params):
        return {**params, "w": params["w"][None]}

    def apply(params, x, *, key=None, train=False):
        del key, train  # Deterministic.
        check_applied(name, x, 3, "(batch, length, channels)", params["w"].shape[1])
        return view.apply(as_view(params), (), x[:, None])[0][:, 0]

    def backward(params, x, y, dy, *, key=None, train=False):
        del key, train
        grads, dx = view.backward(as_view(params), (), x[:, None], y[:, None], dy[:, None])
        return {**grads, "w": grads["w"][0]}, dx[:, 0]

    return with_rule_gradient(stateless(init, apply, backward, name=name))

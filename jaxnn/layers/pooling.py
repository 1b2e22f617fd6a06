"""MaxPool2D, AvgPool2D, SumPool2D and GlobalAvgPool on NHWC inputs, and their manual rules.

Max pooling routes ``dy`` to the arg-max of each window; among tied maxima it picks the
first in row-major window order, which is where ``jax.grad`` of ``lax.reduce_window`` max
(XLA's select-and-scatter with ``>=``) sends it. Average pooling spreads ``dy`` evenly over
the window, dividing by the same count as the forward pass; sum pooling copies ``dy`` to
every cell of its window. Where windows overlap, a cell adds what each of its windows sends.
Global average pooling spreads ``dy`` evenly over the whole image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnn.layer import (
    Layer,
    Shape,
    ShapeError,
    check_applied,
    check_bool,
    check_rank,
    stateless,
    with_rule_gradient,
)
from jaxnn.layers import _spatial


def _pool(kind, window, stride, padding, options=""):
    """The checked arguments, name, ``init`` and window helpers of a pooling layer;
    ``options`` (e.g. ``", count_include_pad=False"``) ends its name."""
    window = _spatial.pair(window, "window", kind)
    strides = _spatial.pair(window if stride is None else stride, "stride", kind)
    padding = _spatial.check_padding(padding, kind)
    if not isinstance(padding, str):
        pads = _spatial.explicit_pads(padding, (0, 0), window, strides)
        if any(pad >= size for size, pair in zip(window, pads, strict=True) for pad in pair):
            raise ValueError(f"{kind}: padding must be smaller than the window {window} (a "
                             f"window of padding alone has no value), got {padding!r}")
    name = f"{kind}({window}, stride={strides}, padding={padding!r}{options})"

    def init(key: jax.Array, input_shape: Shape):
        del key  # No parameters.
        _, out_hw = _spatial.infer_nhwc(name, input_shape, window, strides, padding)
        return (input_shape[0], *out_hw, input_shape[3]), ()

    def geometry(x):
        """``(pads, out_hw)`` of an input, refused as ``init`` refuses its shape."""
        check_applied(name, x, 4, _spatial.NHWC_LAYOUT)
        return _spatial.infer_nhwc(name, x.shape, window, strides, padding)

    def reduce(x, init_value, op, pads):
        return lax.reduce_window(
            # A concrete numpy init value lets JAX use its differentiable max/add windows.
            x, np.asarray(init_value, x.dtype), op, (1, *window, 1), (1, *strides, 1),
            ((0, 0), *pads, (0, 0)),
        )

    return name, window, strides, init, geometry, reduce


def _route_to_first_max(views, dy):
    """``dy`` routed, per window, to the first view (row-major window order) equal to the
    window's maximum: where ``jax.grad`` of ``lax.reduce_window`` max sends it.

    Elementwise compares over the strided views, with no arg-max over a stacked window axis
    (whose transposes made the rule 3x slower on CPU for 2x2 windows). The maximum is taken
    here, from the views themselves, not from the forward pass's output: inside one
    compiled program XLA may compute the input twice, once into the forward's pooling and
    once into these views, not always to the same bits (a GroupNorm after a transposed
    convolution did), and then no view equalled the forward's maximum and ``dy`` was lost.
    """
    y = functools.reduce(jnp.maximum, views)
    zero = jnp.zeros((), dy.dtype)
    routed, taken = [], None
    for view in views:
        hit = view == y
        if taken is None:
            taken = hit
        else:
            hit, taken = hit & ~taken, taken | hit
        routed.append(jnp.where(hit, dy, zero))
    return routed


def _lowest(dtype) -> float | int:
    """What a padded cell holds in max pooling: -inf, or an integer dtype's least value."""
    if jnp.issubdtype(dtype, jnp.bool_):  # a mask's: max pooling is "any"
        return False
    return -jnp.inf if jnp.issubdtype(dtype, jnp.inexact) else jnp.iinfo(dtype).min


def MaxPool2D(
    window: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    padding: _spatial.Padding = "VALID",
) -> Layer:
    """Max pooling over spatial windows.

    Args:
      window: pooling window (an int for square windows).
      stride: step between windows; defaults to ``window`` (non-overlapping).
      padding: "SAME", "VALID", an int, or ((top, bottom), (left, right)); padded cells
        hold -inf (an integer input's least value) and never win.

    Returns:
      A parameter-free `Layer`.
    """
    name, window, strides, init, geometry, reduce = _pool("MaxPool2D", window, stride, padding)

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        pads, _ = geometry(x)
        return reduce(x, _lowest(x.dtype), lax.max, pads)

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, y, key, train  # y: its maximum is taken again (`_route_to_first_max`)
        pads, out_hw = geometry(x)
        # One copy of x for every view and their maximum: fused into each, XLA could
        # compute x again per consumer, to other bits.
        x = lax.optimization_barrier(x)
        padded = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=_lowest(x.dtype))
        views = _spatial.window_slices(padded, window, strides, out_hw)
        routed = _route_to_first_max(views, dy)
        dx = _spatial.scatter_windows(routed, padded.shape[1:3], window, strides)
        return (), _spatial.crop(dx, pads)

    return with_rule_gradient(stateless(init, apply, backward, name=name))


def AvgPool2D(
    window: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    padding: _spatial.Padding = "VALID",
    count_include_pad: bool = True,
) -> Layer:
    """Average pooling over spatial windows.

    Args:
      window: pooling window (an int for square windows).
      stride: step between windows; defaults to ``window`` (non-overlapping).
      padding: "SAME", "VALID", an int, or ((top, bottom), (left, right)); padded cells
        hold zeros.
      count_include_pad: divide by the full window size (True, as stax, Flax and PyTorch do
        by default) or by the number of real, unpadded cells in each window (False).

    Returns:
      A parameter-free `Layer`.
    """
    count_include_pad = check_bool(count_include_pad, "count_include_pad", "AvgPool2D")
    name, window, strides, init, geometry, reduce = _pool(
        "AvgPool2D", window, stride, padding,
        "" if count_include_pad else ", count_include_pad=False")

    def divisor(x, pads):
        if count_include_pad:
            return math.prod(window)
        ones = jnp.ones((1, *x.shape[1:3], 1), _reduced_dtype(jnp.mean, x.dtype))
        return reduce(ones, 0, lax.add, pads)

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        pads, _ = geometry(x)
        return reduce(_as_reduced_by(jnp.mean, x), 0, lax.add, pads) / divisor(x, pads)

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, y, key, train
        pads, _ = geometry(x)
        return (), _spread(dy / divisor(x, pads), x.shape[1:3], window, strides, pads)

    return stateless(init, apply, backward, name=name)


def _reduced_dtype(reduction: Callable, dtype) -> np.dtype:
    """The dtype ``reduction`` (`jnp.sum`, `jnp.mean`) adds ``dtype`` in: an integer one
    (uint8 pixels) widened or made float, so that a window's sum cannot wrap around (a 2x2
    average of 200s in uint8 was 8); a float one as it is."""
    return jax.eval_shape(reduction, jax.ShapeDtypeStruct((), dtype)).dtype


def _as_reduced_by(reduction: Callable, x: jax.Array) -> jax.Array:
    return x.astype(_reduced_dtype(reduction, x.dtype))


def SumPool2D(
    window: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    padding: _spatial.Padding = "VALID",
) -> Layer:
    """Sum pooling over spatial windows: `AvgPool2D` without the division.

    ``y[n, a, b, c] = sum_{i, j} x_pad[n, s_h a + i, s_w b + j, c]``. The rule copies each
    ``dy[n, a, b, c]`` to every cell of its window, ``dx[n, p, q, c] = sum of dy over the
    windows that hold (p, q)`` (overlapping windows add), then drops the padding.

    Args:
      window: pooling window (an int for square windows).
      stride: step between windows; defaults to ``window`` (non-overlapping).
      padding: "SAME", "VALID", an int, or ((top, bottom), (left, right)); padded cells
        hold zeros.

    Returns:
      A parameter-free `Layer`.

    Raises:
      ValueError: for a window or stride that is not a positive int (or pair of them), or
        an unknown padding.
    """
    name, window, strides, init, geometry, reduce = _pool("SumPool2D", window, stride, padding)

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        pads, _ = geometry(x)
        return reduce(_as_reduced_by(jnp.sum, x), 0, lax.add, pads)

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, y, key, train
        pads, _ = geometry(x)
        return (), _spread(dy, x.shape[1:3], window, strides, pads)

    return stateless(init, apply, backward, name=name)


def GlobalAvgPool() -> Layer:
    """The mean over height and width: NHWC (N, H, W, C) -> (N, C).

    ``y[n, c] = sum_{h, w} x[n, h, w, c] / (H W)``; the rule spreads ``dy`` evenly over the
    image, ``dx[n, h, w, c] = dy[n, c] / (H W)``.

    Returns:
      A parameter-free `Layer`.
    """
    name = "GlobalAvgPool()"

    def init(key: jax.Array, input_shape: Shape):
        del key  # No parameters.
        check_rank(name, input_shape, 4, _spatial.NHWC_LAYOUT)
        if any(dim is None for dim in input_shape[1:]):
            raise ShapeError(f"{name} needs known height, width and channels, got "
                             f"{tuple(input_shape)}")
        return (input_shape[0], input_shape[3]), ()

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        check_applied(name, x, 4, _spatial.NHWC_LAYOUT)
        return jnp.mean(x, axis=(1, 2))

    def backward(params, x, y, dy, *, key=None, train=False):
        del params, y, key, train
        share = dy / (x.shape[1] * x.shape[2])
        return (), jnp.broadcast_to(share[:, None, None, :], x.shape)

    return stateless(init, apply, backward, name=name)


def _spread(share, in_hw, window, strides, pads):
    """``share`` (N, oh, ow, C) added onto every cell of its window, padding dropped: the
    rule of average (``share = dy / count``) and sum (``share = dy``) pooling."""
    padded_hw = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads, strict=True))
    dx = _spatial.scatter_windows([share] * math.prod(window), padded_hw, window, strides)
    return _spatial.crop(dx, pads)

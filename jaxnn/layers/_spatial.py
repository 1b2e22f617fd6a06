"""Shared arithmetic of 2-D windows (convolution and pooling) on NHWC inputs.

Output size along one axis of length ``n`` with window ``k``, stride ``s`` and padding
``(lo, hi)``: ``o = (n + lo + hi - k) // s + 1`` (the W2 = (W1 - F + 2P)/S + 1 of the
textbooks when ``lo = hi = P`` and the division is exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnn import initializers
from jaxnn.layer import (
    MAX_SIZE,
    Shape,
    ShapeError,
    check_rank,
    is_integer,
    param_dtype,
    positive_int,
)

Padding = str | int | Sequence[tuple[int, int]]
Pairs = tuple[tuple[int, int], tuple[int, int]]


def pair(value: int | Sequence[int], what: str, layer: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; checks that both entries are positive ints."""
    values = tuple(value) if isinstance(value, list | tuple) else (value, value)
    try:
        if len(values) != 2:
            raise ValueError
        return tuple(positive_int(v, what, layer) for v in values)  # type: ignore[return-value]
    except ValueError:
        raise ValueError(f"{layer}: {what} must be a positive int (at most 2**31 - 1) or a "
                         f"pair of them, got {value!r}") from None


def is_pad(value: object) -> bool:
    """Whether ``value`` is one side's padding: an int in [0, `MAX_SIZE`]."""
    return is_integer(value) and 0 <= value <= MAX_SIZE


def check_padding(padding: Padding, layer: str) -> Padding:
    """Validates a padding spec: "SAME", "VALID", an int >= 0, or ((lo, hi), (lo, hi))."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f'{layer}: padding must be "SAME", "VALID" or an int, got {padding!r}')
        return padding.upper()
    if is_integer(padding):
        if not is_pad(padding):
            raise ValueError(f"{layer}: padding must be in [0, 2**31 - 1], got {padding}")
        return int(padding)
    try:
        pads = tuple((lo, hi) for lo, hi in padding)
    except (TypeError, ValueError):
        pads = ()
    # Entries are ints as given: int() truncated 1.5 to 1 and read "2" as 2.
    if len(pads) != 2 or not all(is_pad(p) for pad in pads for p in pad):
        raise ValueError(
            f'{layer}: padding must be "SAME", "VALID", an int or ((lo, hi), (lo, hi)) of '
            f"ints >= 0; got {padding!r}"
        )
    return tuple((int(lo), int(hi)) for lo, hi in pads)


def explicit_pads(
    padding: Padding, in_hw: tuple[int, int], window: tuple[int, int], strides: tuple[int, int]
) -> Pairs:
    """Resolves a checked padding spec to ``((lo_h, hi_h), (lo_w, hi_w))``."""
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(in_hw, window, strides, padding))  # type: ignore
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(padding)  # type: ignore[return-value]


def output_hw(in_hw, window, strides, pads) -> tuple[int, int]:
    """The spatial output size (see the module docstring)."""
    return tuple(  # type: ignore[return-value]
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(in_hw, window, strides, pads, strict=True)
    )


NHWC_LAYOUT = "NHWC (batch, height, width, channels)"


def infer_nhwc(
    layer: str, input_shape: Shape, window, strides, padding: Padding
) -> tuple[Pairs, tuple[int, int]]:
    """Checks an NHWC input shape and returns ``(pads, (out_h, out_w))``."""
    check_rank(layer, input_shape, 4, NHWC_LAYOUT)
    if any(dim is None for dim in input_shape[1:]):
        raise ShapeError(f"{layer} needs known height, width and channels, got {input_shape}")
    in_hw = tuple(input_shape[1:3])
    pads = explicit_pads(padding, in_hw, window, strides)
    out_hw = output_hw(in_hw, window, strides, pads)
    if min(out_hw) < 1:
        padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads, strict=True))
        raise ShapeError(
            f"{layer}: window {window} does not fit the padded input {padded} "
            f"(input {in_hw}, padding {pads})"
        )
    return pads, out_hw


def window_slices(x, window, strides, out_hw):
    """The strided view ``x[:, i::s, j::s, :]`` (``out_hw`` long) for each window offset."""
    (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
    n, _, _, c = x.shape
    return [
        lax.slice(x, (0, i, j, 0), (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c),
                  (1, sh, sw, 1))
        for i in range(kh)
        for j in range(kw)
    ]


def scatter_windows(contributions, padded_hw, window, strides):
    """Adds ``contributions[offset]`` (N, oh, ow, C) back onto the padded input grid.

    The transpose of `window_slices`: each offset's values land at ``(i + s*a, j + s*b)``,
    placed by ``lax.pad`` with interior padding (stride - 1) rather than a scatter.
    """
    (kh, kw), (sh, sw), (hp, wp) = window, strides, padded_hw
    _, oh, ow, _ = contributions[0].shape
    if (sh, sw) == (kh, kw) and (hp, wp) == (kh * oh, kw * ow):
        # The windows tile the grid: each cell gets one contribution, so interleaving the
        # offsets replaces the padded sum.
        return interleave([contributions[i * kw:(i + 1) * kw] for i in range(kh)])
    total = None
    for index, part in enumerate(contributions):
        i, j = divmod(index, kw)
        placed = lax.pad(
            part,
            lax.full((), 0, part.dtype),
            ((0, 0, 0), (i, hp - i - (sh * (oh - 1) + 1), sh - 1),
             (j, wp - j - (sw * (ow - 1) + 1), sw - 1), (0, 0, 0)),
        )
        total = placed if total is None else total + placed
    return total


def interleave(parts):
    """The (n, rows*h, cols*w, c) grid with ``parts[p][q]`` (each (n, h, w, c)) at rows
    ``p::rows`` and columns ``q::cols``: a stack and a reshape."""
    n, h, w, c = parts[0][0].shape
    stacked = jnp.stack([jnp.stack(row, axis=3) for row in parts], axis=2)
    return stacked.reshape(n, len(parts) * h, len(parts[0]) * w, c)


def crop(x, pads: Pairs):
    """Removes spatial padding ``pads`` from an NHWC array."""
    (top, bottom), (left, right) = pads
    return x[:, top : x.shape[1] - bottom, left : x.shape[2] - right, :]


NHWC = ("NHWC", "HWIO", "NHWC")


class ConvArguments(NamedTuple):
    """A 2-D convolution's checked arguments: windows, strides, padding, initializers."""

    window: tuple[int, int]
    strides: tuple[int, int]
    padding: Padding
    w_init: initializers.Initializer
    b_init: initializers.Initializer


def promoted(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x`` and the filter ``w`` in their common dtype, as Dense's matmul computes: XLA's
    convolution takes one dtype (a bfloat16 or integer input on float32 filters failed)."""
    dtype = jnp.result_type(x, w)
    return x.astype(dtype), w.astype(dtype)


def conv_arguments(layer, kernel_size, stride, padding, w_init, b_init):
    """Checks a 2-D convolution's constructor arguments (its ``features`` the caller checks
    and keeps), raising ValueError naming ``layer`` and quoting the bad value."""
    return ConvArguments(pair(kernel_size, "kernel_size", layer), pair(stride, "stride", layer),
                         check_padding(padding, layer),
                         initializers.get(w_init, f"{layer}: w_init"),
                         initializers.get(b_init, f"{layer}: b_init"))


def conv_params(key, args: ConvArguments, in_channels, features, use_bias, dtype) -> dict:
    """``{"w": HWIO kernel, "b": (features,)}`` (no ``"b"`` without bias)."""
    w_key, b_key = jax.random.split(key)
    dtype = param_dtype(dtype)
    params = {"w": args.w_init(w_key, (*args.window, in_channels, features), dtype)}
    if use_bias:
        params["b"] = args.b_init(b_key, (features,), dtype)
    return params

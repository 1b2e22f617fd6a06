"""Convolution as one matmul over the input's patches (im2col), for the CPU lowering of
`jaxnn.layers.Conv2D` where Winograd's F(2x2, 3x3) does not apply.

The ``kh * kw`` strided views of the padded input (`_spatial.window_slices`), concatenated
along the channel axis, are the patches: ``(n, oh, ow, kh * kw * in)``. The convolution is
``patches @ w.reshape(kh * kw * in, out)``; its rule is the same matmul's: ``dw =
patches^T dy`` and ``dpatches = dy w^T``, whose ``kh * kw`` channel blocks add back onto the
padded input grid (`_spatial.scatter_windows`) before the padding is cropped.

Why: inside a compiled loop (a training program's `lax.scan`), XLA's CPU convolution and
its input gradient ran 2-9x slower than these matmuls in every measured shape (1 to 64 input
channels, 3x3 and 5x5 kernels, strides 1 and 2), one trial alone or vmapped over trials,
where `jax.vmap` makes the convolution a grouped one (`experiments/benchmark_conv.py
--in-scan`). The patches cost ``kh * kw`` copies of the input, recomputed by the rule rather
than kept for it.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxnn.layers import _spatial


def applies(x) -> bool:
    """Whether convolving ``x`` runs as im2col: in float32 or float64. In 16-bit floats
    XLA's convolution accumulates in float32, where the matmul would round its sums."""
    return x.dtype in (jnp.float32, jnp.float64)


def patches(x, window, strides, pads, out_hw):
    """The (n, oh, ow, kh * kw * c) patches of NHWC ``x``, offset-major then channel."""
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    return jnp.concatenate(_spatial.window_slices(padded, window, strides, out_hw), axis=-1)


def conv(x, w, strides, pads):
    """``lax.conv_general_dilated(x, w, strides, pads)`` for NHWC ``x`` and HWIO ``w``."""
    out_hw = _spatial.output_hw(x.shape[1:3], w.shape[:2], strides, pads)
    return patches(x, w.shape[:2], strides, pads, out_hw) @ w.reshape(-1, w.shape[-1])


def gradients(x, w, dy, strides, pads):
    """``(dx, dw)``: the gradients of ``sum(conv(x, w, strides, pads) * dy)``."""
    window, cin, cout = w.shape[:2], w.shape[2], w.shape[3]
    rows = patches(x, window, strides, pads, dy.shape[1:3]).reshape(-1, w.size // cout)
    dw = (rows.T @ dy.reshape(-1, cout)).reshape(w.shape)
    dpatches = dy @ w.reshape(-1, cout).T
    blocks = [dpatches[..., i * cin:(i + 1) * cin] for i in range(window[0] * window[1])]
    padded_hw = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[1:3], pads, strict=True))
    return _spatial.crop(_spatial.scatter_windows(blocks, padded_hw, window, strides), pads), dw

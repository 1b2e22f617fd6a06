"""Winograd's minimal filtering F(2x2, 3x3): 3x3 stride-1 convolutions in 2.25x fewer
multiplications, for the CPU lowering of `jaxnn.layers.Conv2D`.

Each 2x2 output tile is ``Y = A^T [(G g G^T) ⊙ (B^T d B)] A`` with ``d`` the 4x4 input tile
around it and ``g`` the 3x3 filter (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016). Summed over input channels, the 16 elementwise products become 16 matmuls
``(tiles, in) @ (in, out)`` instead of the 9 ``(positions, in) @ (in, out)`` of a direct
convolution, which has 4x as many rows; the transforms are additions that XLA fuses.

The filter gradient is the adjoint of the same map: ``dg = G^T [sum_tiles (B^T d B) ⊙
(A dY A^T)] G``. Both are exact in exact arithmetic; in floating point they round
differently from a direct convolution, with errors of the same order (F(2x2, 3x3) only uses
the interpolation points 0, 1, -1 and infinity).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnn.layers import _spatial

# B^T, G and A^T of F(2, 3).
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_GT = tuple(zip(*_G, strict=True))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))
_A = tuple(zip(*_AT, strict=True))
_B = tuple(zip(*_BT, strict=True))

# From this many input channels on, F(2x2, 3x3) was faster on CPU in every measured shape,
# both for the forward pass and for a train step's forward and gradients.
# `experiments/benchmark_conv.py` and the same programs at other sizes (batch 128, 2 cores,
# two runs) measured Winograd / direct: 32 channels at 14x14, forward 0.65-0.66x and train
# 0.56-0.65x (at 4x4 and 8x8: 0.57-0.95x, 0.56-0.62x); 16 channels at 14x14, forward
# 0.73-0.80x and train 0.69-0.75x, but the forward 1.2-1.45x at 4x4 and 8x8; 8 channels,
# forward 1.22x; 1 and 4 channels, forward 3.5-3.8x, where the narrow channel axis dominates.
MIN_CHANNELS = 32
# On images of at least LARGE_SIDE x LARGE_SIDE, from LARGE_MIN_CHANNELS on. Inside a
# training scan (`benchmark_conv.py --in-scan --sizes 14 16 32`, Zen 4, batch 64, µs per
# step solo / vmapped x8, im2col vs Winograd): 16 -> 16 at 32x32 19,588 / 17,657 vs
# 17,252 / 17,533; 16 -> 32 at 16x16 6,018 / 6,466 vs 5,048 / 6,257; 16 -> 16 at 16x16
# equal; but 16 -> 64 at 14x14 6,876 / 7,038 vs 7,821 / 8,262, and at 8x8 im2col wins by
# 20-27%. Workload E (four 16 -> 16 convolutions at 32x32): 413 vs 442 ms per step in a
# scan, 517 vs 616 ms alone (5 alternated rounds each; BENCHMARKS.md).
LARGE_MIN_CHANNELS = 16
LARGE_SIDE = 16


def applies(window, strides, x) -> bool:
    """Whether convolving ``x`` (NHWC) is 3x3, stride 1, wide enough to gain from F(2x2, 3x3)
    and in float32 or float64: in 16-bit floats the transforms' additions would round at
    every step, where a direct convolution accumulates in float32."""
    channels, side = x.shape[-1], min(x.shape[1:3])
    wide = channels >= MIN_CHANNELS or (channels >= LARGE_MIN_CHANNELS and side >= LARGE_SIDE)
    return (tuple(window) == (3, 3) and tuple(strides) == (1, 1) and wide
            and x.dtype in (jnp.float32, jnp.float64))


def _combine(matrix, parts):
    """``[sum_j matrix[i][j] * parts[j] for each row i]`` with 0 and +-1 as adds."""
    rows = []
    for coefficients in matrix:
        total = None
        for coefficient, part in zip(coefficients, parts, strict=True):
            if coefficient == 0:
                continue
            term = part if coefficient == 1 else -part if coefficient == -1 else coefficient * part
            total = term if total is None else total + term
        rows.append(total)
    return rows


def _sandwich(matrix, grid):
    """``matrix @ grid @ matrix^T`` over a nested list grid of equally shaped arrays."""
    columns = [_combine(matrix, [row[v] for row in grid]) for v in range(len(grid[0]))]
    return [_combine(matrix, [column[a] for column in columns]) for a in range(len(matrix))]


def _stacked_combination(matrix, parts):
    """``jnp.stack(_combine(matrix, parts))`` as one broadcast sum over ``parts``.

    A stack of sums is a concatenation whose operands XLA's CPU backend computes as separate
    fusions and then copies; the broadcast sum is one fusion. Used with 4 parts (``A dY A^T``
    and each pass of ``B^T d B``: 5% and 2-6% of workload B's step); with 16 it would do 4x
    the work of the sums.
    """
    total = None
    for column, part in zip(np.asarray(matrix).T, parts, strict=True):
        term = jnp.asarray(column.reshape(-1, *[1] * part.ndim), part.dtype) * part[None]
        total = term if total is None else total + term
    return total


def _tiles(height: int, width: int) -> tuple[int, int]:
    return -(-height // 2), -(-width // 2)


def _filter_tiles(w):
    """``G g G^T`` of each (input, output) channel pair's 3x3 filter: (16, in, out)."""
    tiles = _sandwich(_G, [[w[i, j] for j in range(3)] for i in range(3)])
    return jnp.stack([part for row in tiles for part in row])


def _input_tiles(x, pads, out_hw):
    """``B^T d B`` of every 4x4 input tile: (16, tiles, channels)."""
    n, h, w, c = x.shape
    th, tw = _tiles(*out_hw)
    # Zeros past the padded input's end complete the last tile; their outputs are cropped.
    config = [(0, 0, 0), (pads[0][0], 2 * th + 2 - h - pads[0][0], 0),
              (pads[1][0], 2 * tw + 2 - w - pads[1][0], 0), (0, 0, 0)]
    padded = lax.pad(x, jnp.zeros((), x.dtype), config)
    grid = [[lax.slice(padded, (0, u, v, 0), (n, u + 2 * th - 1, v + 2 * tw - 1, c),
                       (1, 2, 2, 1)) for v in range(4)] for u in range(4)]
    # B^T along the tiles' rows, then along their columns, as two 4-term broadcast sums that
    # XLA fuses into one pass (16 sums and a stack would be 16 fusions and a copy).
    rows = [_stacked_combination(_BT, [grid[u][v] for u in range(4)]) for v in range(4)]
    by_column = _stacked_combination(_BT, rows)  # (b, a, n, th, tw, c)
    return jnp.swapaxes(by_column, 0, 1).reshape(16, -1, c)


def conv(x, w, pads):
    """``lax.conv_general_dilated(x, w, (1, 1), pads)`` for NHWC ``x`` and 3x3 HWIO ``w``."""
    n, h, width, _ = x.shape
    out_hw = (h + sum(pads[0]) - 2, width + sum(pads[1]) - 2)
    th, tw = _tiles(*out_hw)
    products = jnp.einsum("tpc,tco->tpo", _input_tiles(x, pads, out_hw), _filter_tiles(w))
    products = products.reshape(4, 4, n, th, tw, w.shape[3])
    outputs = _sandwich(_AT, [[products[a, b] for b in range(4)] for a in range(4)])
    return _spatial.interleave(outputs)[:, : out_hw[0], : out_hw[1]]


def gradients(x, w, dy, pads):
    """``(dx, dw)``: the gradients of ``sum(conv(x, w, pads) * dy)``, the adjoint of `conv`.

    ``A dY A^T`` of each output tile is shared: contracted over tiles with the input tiles
    it gives ``dw``; multiplied by the transformed filters and mapped back by ``B (.) B^T``,
    its 4x4 tiles overlap-add (at stride 2) into ``dx``.
    """
    n, h, width, c = x.shape
    _, oh, ow, out = dy.shape
    th, tw = _tiles(oh, ow)
    dy = jnp.pad(dy, ((0, 0), (0, 2 * th - oh), (0, 2 * tw - ow), (0, 0)))
    corners = [dy[:, p::2, q::2] for p in range(2) for q in range(2)]
    spread = _stacked_combination(np.kron(_A, _A), corners).reshape(16, -1, out)

    products = jnp.einsum("tpc,tpo->tco", _input_tiles(x, pads, (oh, ow)), spread)
    dw = _sandwich(_GT, [[products[4 * a + b] for b in range(4)] for a in range(4)])
    dw = jnp.stack([jnp.stack(row) for row in dw])

    back = jnp.einsum("tpo,tco->tpc", spread, _filter_tiles(w)).reshape(4, 4, n, th, tw, c)
    tiles = _sandwich(_B, [[back[a, b] for b in range(4)] for a in range(4)])

    def overlap_add(r, q):
        """Rows ``r::2`` and columns ``q::2`` of the padded dx. Tile ``a`` covers padded
        rows ``2a .. 2a + 3``, so row ``2a + r`` sums offset ``r`` of tile ``a`` and offset
        ``r + 2`` of tile ``a - 1`` (likewise for columns)."""
        own, previous = (0, 1), (1, 0)
        return (jnp.pad(tiles[r][q], ((0, 0), own, own, (0, 0)))
                + jnp.pad(tiles[r + 2][q], ((0, 0), previous, own, (0, 0)))
                + jnp.pad(tiles[r][q + 2], ((0, 0), own, previous, (0, 0)))
                + jnp.pad(tiles[r + 2][q + 2], ((0, 0), previous, previous, (0, 0))))

    # (n, 2 th + 2, 2 tw + 2, c)
    padded = _spatial.interleave([[overlap_add(r, q) for q in range(2)] for r in range(2)])
    # The adjoint of `_input_tiles`' padding is the crop (a negative pad).
    crop = [(0, 0, 0), (-pads[0][0], -(2 * th + 2 - h - pads[0][0]), 0),
            (-pads[1][0], -(2 * tw + 2 - width - pads[1][0]), 0), (0, 0, 0)]
    return lax.pad(padded, jnp.zeros((), padded.dtype), crop), dw

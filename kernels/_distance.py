"""Squared-distance tiles computed on chip, shared by the Triton modules that rank or weigh pairs.

For a block of rows x_I of x [N, D] and a block of rows r_J of a second set (x itself or a
reference set), the squared distance in the package's convention is

    max(|x_i|^2 + |r_j|^2 - 2 x_i.r_j, DISTANCE_EPS)

in float32. The dot products come from tl.dot over BLOCK_D chunks of D (float32 inputs with
input_precision="ieee", so the products match a float32 matmul; float16 and bfloat16 on tensor
cores with float32 accumulation); the squared norms are summed in float32 from the loaded values.
(|x|^2 + |r|^2) - 2 acc is what callers form (2 acc is exact, so a fused multiply-add gives the
same value); the clamp (clamp_min) is theirs too, since some need the value before it. It keeps
NaN, as torch.clamp does: a NaN embedding gives NaN distances, as in the reference.

Row pointers are [BLOCK, 1] tensors of row starts (callers clamp out-of-range rows to a valid one
and mask their results); only a D that is not a multiple of BLOCK_D needs load masks (EVEN_D).
Such masks cannot be vectorised and cost the 16-bit dot some 60 registers per thread (a peeled,
masked tail step after an unmasked loop was measured no better).
"""

import triton
import triton.language as tl

from reidfast.ops import distance

# The package's one epsilon (reidfast.ops.distance), as a compile-time constant.
DISTANCE_EPS = tl.constexpr(distance.DISTANCE_EPS)


@triton.jit
def clamp_min(squares):
    """max(squares, DISTANCE_EPS) keeping NaN (tl.maximum drops it by default), as torch.clamp."""
    return tl.maximum(squares, DISTANCE_EPS, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def squared_norms(x_rows, stride_d, D, EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """|x_i|^2 in float32 for the rows x_rows [BLOCK_N, 1] (pointers)."""
    offs_d = tl.arange(0, BLOCK_D)
    x_sq = tl.zeros([BLOCK_N], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_off = (d0 + offs_d).to(tl.int64)[None, :] * stride_d
        if EVEN_D:
            a = tl.load(x_rows + d_off).to(tl.float32)
        else:
            a = tl.load(x_rows + d_off, mask=(d0 + offs_d < D)[None, :], other=0.0).to(tl.float32)
        x_sq += tl.sum(a * a, axis=1)
    return x_sq


@triton.jit
def row_block(
    first_row, N, x_ptr, stride_xn, stride_xd, labels_ptr, stride_l, D,
    EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Rows [first_row, first_row + BLOCK_N) of x: (rows, the rows clamped to N - 1 as int64,
    pointers to their starts [BLOCK_N, 1], their labels, their float32 squared norms). Loads use
    the clamped rows, so they need no row mask; callers mask their results with rows < N."""
    rows = first_row + tl.arange(0, BLOCK_N)
    rows_in = tl.minimum(rows, N - 1).to(tl.int64)
    x_rows = x_ptr + rows_in[:, None] * stride_xn
    labels = tl.load(labels_ptr + rows_in * stride_l)
    return rows, rows_in, x_rows, labels, squared_norms(x_rows, stride_xd, D, EVEN_D, BLOCK_N, BLOCK_D)


@triton.jit
def dot_tile(
    x_rows,
    r_rows,
    stride_xd,
    stride_rd,
    D,
    EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """(x_I . r_J^T [BLOCK_N, BLOCK_M], |r_j|^2 [BLOCK_M]), both float32, for the row pointers
    x_rows [BLOCK_N, 1] and r_rows [BLOCK_M, 1]."""
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    r_sq = tl.zeros([BLOCK_M], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = (d0 + offs_d).to(tl.int64)[None, :]
        if EVEN_D:
            a = tl.load(x_rows + dd * stride_xd)
            b = tl.load(r_rows + dd * stride_rd)
        else:
            d_ok = (d0 + offs_d < D)[None, :]
            a = tl.load(x_rows + dd * stride_xd, mask=d_ok, other=0.0)
            b = tl.load(r_rows + dd * stride_rd, mask=d_ok, other=0.0)
        b32 = b.to(tl.float32)
        r_sq += tl.sum(b32 * b32, axis=1)
        acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
    return acc, r_sq

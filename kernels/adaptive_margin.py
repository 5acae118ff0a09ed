"""Triton kernels of adaptive_margin_forward: the adaptive-margin pairwise loss of a batch, its
margins and (optionally) its gradient, in two passes over distance tiles kept on chip.

Semantics (reidfast.ops.adaptive_margin is the specification, `_reference_loss` its code). For x
[N, D] with labels [N], over the unordered pairs i < j, D_ij = max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j,
1e-12) in float32; s and d are the means of D_ij over the positive (same label) and negative
pairs; Mp = -expm1(-mu d) / mu, Mn = softplus(gamma s) / gamma; the loss is
sum_pos max(D - Mp, 0) + sum_neg max(Mn - D, 0), divided by N (N - 1) / 2 ("mean"), or with each
side divided by its pair count ("balanced"), or not ("sum"). The gradient treats the margins as
constants: with w_ij the hinge slope of the pair (the reduction's scale for an active positive
pair, minus it for an active negative pair, 0 otherwise and where D_ij was clamped), W symmetric,
grad_x = 2 (diag(W 1) - W) x, i.e. grad_i = 2 sum_j w_ij (x_i - x_j).

Design. Four launches, no host synchronisation, no float atomics:

1. Pair sums (`_pair_tiles_kernel`, HINGE=False). The distance matrix's upper triangle in square
   tiles of BLOCK rows and columns: program (row block b, split s) visits the column tiles
   [b + s * tiles_per_split, ...) of its row block (the diagonal tile is tile b), each tile's
   distances from one tl.dot pass over D (kernels/_distance.py: float32 inputs with
   input_precision="ieee", float16 and bfloat16 on tensor cores with float32 accumulation; never
   written to memory), and counts the pairs with column > row: the sums of the positive and the
   negative distances (a float32 tile sum added to a float64 running total) and the number of
   positive pairs (int32). Each program writes its three partials to its own slot of a float64
   buffer [3, programs] (later row blocks have fewer tiles; their trailing splits write zeros).
2. Margins (`_margins_kernel`, one program): the partials summed in a fixed order (so the result
   is reproducible run to run), the negative count as N (N - 1) / 2 minus the positive one, then
   s, d, Mp, Mn in float64 (expm1 and log1p by short series near 0, so that neither loses
   precision; softplus as max(g, 0) + log1p(exp(-|g|)), which cannot overflow), and the
   reduction's scales. Quotients are a float32 reciprocal refined by Newton steps (_div): ptxas
   expands a float64 division into a subroutine that takes a stack frame. mu and gamma are kernel
   scalars, passed as the bit patterns of their float64 values (int64), so they reach the kernel
   unrounded. Writes margins [4] float32 (Mp, Mn, s, d) and scales [3] float64 (positive,
   negative, positive / negative) to device memory for the next launches.
3a. Hinge terms without the gradient: the pair kernel again (HINGE=True), the same tiles, now
   summing pos_scale max(D - Mp, 0) over positive and neg_scale max(Mn - D, 0) over negative
   pairs against the margins read from device memory, one tile reduction and a float32 running
   total per program (float64 there puts the kernel past ptxas's 128-register point, where it
   spills for odd D), written to the program's own float64 slot.
3b. Hinge terms with the gradient (`_hinge_grad_kernel`): program (row block I, split s) owns the
   gradient rows of I over a range of its D columns and visits every column tile J of the full
   square (both (i, j) and (j, i)), so each gradient element is written by one program. Per tile:
   the distance tile (all of D), its scaled hinge terms (pairs with column > row, so each
   unordered pair counts once; float64 running total; only split 0 writes it), and its slopes
   as two masks, active positive and active negative (the diagonal excluded; a clamped distance
   has slope 0). The row sums of W are kept as two int32 counts per row, and W_IJ x_J over the
   program's D range is a second tl.dot, BLOCK_G columns at a time: float32 x multiplies W
   itself (exactly +-scale or 0) on the "ieee" path; float16 and bfloat16 multiply operands
   exact in 16 bits on tensor cores: the sign matrix times the one scale ("mean", "sum"), or for
   "balanced" the positive mask P and minus the negative mask Q, chained through the dot's
   accumulator as neg_scale (ratio P x_J - Q x_J). At the end grad_I = 2 (rowsum(W) x_I -
   sum_J W_IJ x_J), rounded to x's dtype once. Where the program's D range is a single BLOCK_G
   chunk, sum_J W_IJ x_J stays in registers (IN_REGS); otherwise it is accumulated in a float32
   workspace [N, D] (for float32 x, the gradient output itself): each tile loads the running
   value (not on the first tile, so no zero fill is needed), adds, and stores it, then a barrier
   orders those stores before the next tile's loads, which threads of another layout may issue.
   Splitting D recomputes the distance tiles once per split; it is used, up to
   _MAX_GRAD_SPLITS, when the row blocks alone are too few programs for the GPU.
4. Loss (`_loss_kernel`, one program): the loss partials summed in a fixed order, as float32.

Tiles (_TILES, per dtype). Square 64 x 64 pair tiles, 8 warps (4 warps measured worse); D steps
of 16 for float32 (the "ieee" dot runs on FMA units and holds both operands' K slice in
registers; 16 is the smallest K that Triton before 3.4 accepts, MIN_DOT_BLOCK) and of 32 for
16-bit types (64 holds twice the operand fragments and spilled in the gradient kernel);
gradient chunks of 16 columns for float32 and 32 for 16-bit types (twice that spilled).
Dimensions below a tile are rounded up to a power of two >= 16. These sizes keep every kernel
free of register spills on sm_80 and sm_90 (tests/test_adaptive_margin_triton_aot.py; the
gradient kernel also checked for all three dtypes, "mean" and "balanced", N in {300, 4096} and
D in {7, 77, 2048}); they were chosen for that fit, not by timing. On sm_75 the float32 and
float16 gradient kernels spill, so the dispatcher does not run these kernels there
(reidfast.kernels.supported). Registers per thread measured (sm_80 / sm_90): pass 1 160 / 142
(16-bit), 190 / 194 (float32); the hinge-only pass 97 / 75 and 128 / 128; the gradient kernel
157 / 124 (float16 "sum", IN_REGS), 211 / 150 (bfloat16 "balanced", workspace), 184 / 186
(float32, D = 2048) and up to 220 / 180 (float32, D = 77); the one-program kernels 26 to 42.
A D that is not a multiple of BLOCK_D costs more (masked loads are not vectorised): up to 242
in the 16-bit gradient kernel, still without spills. The gradient kernel's budget at 256
threads, float32 values per thread: the distance accumulator 16, the slope operands 8 to 16,
the product chunk 8 and with IN_REGS its running sum 8, the workspace chunk 8, the dot operand
fragments in flight the rest.

Loads. Out-of-range rows and columns are clamped to the last row (their results are masked out),
so only a D that is not a multiple of BLOCK_D (or BLOCK_G) needs load masks. Pointer offsets are
int64; row and column indices int32.

NaN. Every clamp and hinge keeps NaN (tl.maximum with propagate_nan), so a NaN embedding gives
NaN sums, margins and loss, as the reference does; the gradient's slopes follow torch's: a
hinge is active unless its argument is <= 0 (NaN is active), and the clamp passes no gradient
where the raw squared distance is below the epsilon or NaN; an inf or NaN entry of x makes its
whole gradient column NaN, as in the reference (_non_finite_columns).

Limits. The caller validates the arguments (x 2-D float32/float16/bfloat16, labels int64 [N],
mu, gamma > 0, at least one positive and one negative pair: without, the margins are NaN or
infinite). Pair counts are int32 per program and float64 beyond, exact up to N = MAX_ROWS =
2^25 (ValueError from `plan` beyond; D at most INDEX_LIMIT = 2^31 - 1025). The
gradient kernel's parallelism is the number of row blocks times the D splits (at most 4), so a
batch of a few hundred rows keeps only a few dozen SMs busy in that pass. Tile sizes and splits
depend on N and D, so dynamic sizes under torch.compile are specialised (guarded).
"""

import struct
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from reidfast.kernels._distance import DISTANCE_EPS, clamp_min, dot_tile, row_block
from reidfast.kernels._launch import MIN_DOT_BLOCK, Launch, check_index_limit, run_launch
from reidfast.ops.enums import REDUCTIONS

# Tiles per dtype: (rows = columns of a pair tile, D per dot step, gradient columns per step, warps).
_TILES = {
    torch.float32: (64, 16, 16, 8),
    torch.float16: (64, 32, 32, 8),
    torch.bfloat16: (64, 32, 32, 8),
}
# The pair kernels split a row block's column tiles until about this many programs run.
_TARGET_PROGRAMS = 512
# The gradient kernel splits D (recomputing the distances per split) up to _MAX_GRAD_SPLITS ways,
# until about _GRAD_TARGET_PROGRAMS programs run.
_GRAD_TARGET_PROGRAMS = 256
_MAX_GRAD_SPLITS = 4
# The one-program reductions: partials per step, warps.
_REDUCE_BLOCK = 128
_REDUCE_NUM_WARPS = 4

# The margins kernel's REDUCTION code is the reduction's position in REDUCTIONS.
_MEAN = tl.constexpr(REDUCTIONS.index("mean"))
_SUM = tl.constexpr(REDUCTIONS.index("sum"))
# The pair counts are exact in float64 and each program's in int32 up to this batch size.
MAX_ROWS = 2**25
# The gradient's W_IJ x_J product: W itself in float32, one sign matrix, or two 0/1 masks.
_SLOPES_FLOAT32, _SLOPES_SIGN, _SLOPES_MASKS = 0, 1, 2


@triton.jit
def _pair_tiles_kernel(
    x_ptr,  # [N, D], any strides
    labels_ptr,  # [N] int64
    margins_ptr,  # [4] float32: Mp, Mn, s, d (read when HINGE)
    scales_ptr,  # [3] float64: the positive and negative scales, their ratio (read when HINGE)
    part_ptr,  # float64 partials: [3, programs] sums and positive count, or [programs] terms
    N,
    D,
    stride_xn,
    stride_xd,
    stride_l,
    tiles_per_split,
    HINGE: tl.constexpr,  # False: pass 1 (sums and counts); True: the scaled hinge terms
    EVEN_D: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    num_parts = tl.num_programs(0) * tl.num_programs(1)
    part = pid_n * tl.num_programs(1) + split
    rows, rows_in, x_rows, row_labels, x_sq = row_block(
        pid_n * BLOCK, N, x_ptr, stride_xn, stride_xd, labels_ptr, stride_l, D, EVEN_D, BLOCK, BLOCK_D
    )
    if HINGE:
        mp = tl.load(margins_ptr)
        mn = tl.load(margins_ptr + 1)
        pos_scale = tl.load(scales_ptr).to(tl.float32)
        neg_scale = tl.load(scales_ptr + 1).to(tl.float32)

    # Running totals: float64 for the sums that make the margins; the scaled hinge terms in
    # float32 (a few more registers here put the kernel past ptxas's 128-register point).
    if HINGE:
        pos_total = tl.full([], 0.0, tl.float32)
    else:
        pos_total = tl.full([], 0.0, tl.float64)
    neg_total = tl.full([], 0.0, tl.float64)
    pos_count = tl.full([], 0, tl.int32)
    num_tiles = tl.cdiv(N, BLOCK)
    tile_begin = pid_n + split * tiles_per_split  # the diagonal tile is tile pid_n
    tile_end = tl.minimum(tile_begin + tiles_per_split, num_tiles)
    for tile in range(tile_begin, tile_end):
        cols = tile * BLOCK + tl.arange(0, BLOCK)
        cols_in = tl.minimum(cols, N - 1).to(tl.int64)
        x_cols = x_ptr + cols_in[:, None] * stride_xn
        dots, c_sq = dot_tile(x_rows, x_cols, stride_xd, stride_xd, D, EVEN_D, BLOCK, BLOCK, BLOCK_D)
        dist = clamp_min((x_sq[:, None] + c_sq[None, :]) - 2.0 * dots)
        col_labels = tl.load(labels_ptr + cols_in * stride_l)
        same = row_labels[:, None] == col_labels[None, :]
        # Each unordered pair once: column > row (rows >= N then have no column < N).
        pair = (cols[None, :] > rows[:, None]) & (cols < N)[None, :]
        pos = pair & same
        neg = pair & ~same
        if HINGE:  # one reduction per tile: the terms scaled first
            terms = tl.where(pos, _relu(dist - mp) * pos_scale, 0.0)
            terms = tl.where(neg, _relu(mn - dist) * neg_scale, terms)
            pos_total += tl.sum(terms)
        else:
            pos_total += tl.sum(tl.where(pos, dist, 0.0)).to(tl.float64)
            neg_total += tl.sum(tl.where(neg, dist, 0.0)).to(tl.float64)
            pos_count += tl.sum(pos.to(tl.int32))

    tl.store(part_ptr + part, pos_total.to(tl.float64))
    if not HINGE:
        tl.store(part_ptr + num_parts + part, neg_total.to(tl.float64))
        tl.store(part_ptr + 2 * num_parts + part, pos_count.to(tl.float64))


@triton.jit
def _sum_parts(ptr, num_parts, BLOCK_P: tl.constexpr):
    """The float64 sum of ptr[0:num_parts], in an order fixed by BLOCK_P alone."""
    acc = tl.zeros([BLOCK_P], tl.float64)
    for p0 in range(0, num_parts, BLOCK_P):
        offs = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(ptr + offs, mask=offs < num_parts, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _expm1(x):
    """exp(x) - 1 in float64 without cancellation near 0 (a series where |x| < 1e-5)."""
    series = x * (1.0 + x * (0.5 + x * (1.0 / 6.0)))
    return tl.where(tl.abs(x) < 1e-5, series, tl.exp(x) - 1.0)


@triton.jit
def _log1p(x):
    """log(1 + x) in float64 for x >= 0 without losing a small x (a series where x < 1e-5)."""
    series = x * (1.0 - x * (0.5 - x * (1.0 / 3.0)))
    return tl.where(x < 1e-5, series, tl.log(1.0 + x))


@triton.jit
def _div(x, y):
    """x / y in float64 for a positive normal y, without ptxas's division subroutine (which takes
    a stack frame): a float32 reciprocal refined by two Newton steps, and one residual correction
    of the quotient (within an ulp of the rounded quotient). An infinite or NaN quotient is
    returned as it is (the correction would turn inf into NaN)."""
    r = tl.fdiv(1.0, y.to(tl.float32), ieee_rounding=False).to(tl.float64)
    r = r * (2.0 - y * r)
    r = r * (2.0 - y * r)
    q = x * r
    return tl.where(tl.abs(q) < float("inf"), tl.fma(tl.fma(-y, q, x), r, q), q)


@triton.jit
def _relu(x):
    """max(x, 0) keeping NaN, as torch.relu (tl.maximum drops NaN by default)."""
    return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _margins_kernel(
    sums_ptr,  # [3, num_parts] float64 from pass 1
    margins_ptr,  # [4] float32 out: Mp, Mn, s, d
    scales_ptr,  # [3] float64 out: the positive and negative pairs' scales and their ratio
    num_parts,
    num_pairs,  # N (N - 1) / 2
    mu_bits,  # mu and gamma: float64 bit patterns
    gamma_bits,
    REDUCTION: tl.constexpr,  # position in REDUCTIONS
    BLOCK_P: tl.constexpr,
):
    mu = mu_bits.to(tl.float64, bitcast=True)
    gamma = gamma_bits.to(tl.float64, bitcast=True)
    pos_sum = _sum_parts(sums_ptr, num_parts, BLOCK_P)
    neg_sum = _sum_parts(sums_ptr + num_parts, num_parts, BLOCK_P)
    num_pos = _sum_parts(sums_ptr + 2 * num_parts, num_parts, BLOCK_P)
    total = tl.zeros([], tl.float64) + num_pairs
    num_neg = total - num_pos
    s = _div(pos_sum, num_pos)
    d = _div(neg_sum, num_neg)
    mp = _div(-_expm1(-mu * d), mu)
    gs = gamma * s
    mn = _div(_relu(gs) + _log1p(tl.exp(-tl.abs(gs))), gamma)
    one = tl.full([], 1.0, tl.float64)
    if REDUCTION == _SUM:
        pos_scale = one
        neg_scale = one
        ratio = one
    elif REDUCTION == _MEAN:
        pos_scale = _div(one, total)
        neg_scale = pos_scale
        ratio = one
    else:
        pos_scale = _div(one, num_pos)
        neg_scale = _div(one, num_neg)
        ratio = _div(num_neg, num_pos)
    tl.store(margins_ptr, mp.to(tl.float32))
    tl.store(margins_ptr + 1, mn.to(tl.float32))
    tl.store(margins_ptr + 2, s.to(tl.float32))
    tl.store(margins_ptr + 3, d.to(tl.float32))
    tl.store(scales_ptr, pos_scale)
    tl.store(scales_ptr + 1, neg_scale)
    tl.store(scales_ptr + 2, ratio)


@triton.jit
def _loss_kernel(part_ptr, loss_ptr, num_parts, BLOCK_P: tl.constexpr):
    tl.store(loss_ptr, _sum_parts(part_ptr, num_parts, BLOCK_P).to(tl.float32))


@triton.jit
def _load_block(row_ptrs, g, stride_d, D, EVEN: tl.constexpr):
    """Columns g [BLOCK_G] of the rows row_ptrs [BLOCK, 1] (0 past D)."""
    ptrs = row_ptrs + g.to(tl.int64)[None, :] * stride_d
    if EVEN:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=(g < D)[None, :], other=0.0)


@triton.jit
def _slope_operands(pos_w, neg_w, pos_scale, neg_scale, dtype: tl.constexpr, SLOPES: tl.constexpr):
    """The slope tile W = pos_scale pos_w - neg_scale neg_w as the operands of _slope_product."""
    if SLOPES == 0:  # float32 x: W itself, exact in float32
        a = tl.where(pos_w, pos_scale, tl.where(neg_w, -neg_scale, 0.0))
        b = a
    elif SLOPES == 1:  # one scale: the sign matrix, exact in 16 bits
        a = tl.where(pos_w, 1.0, tl.where(neg_w, -1.0, 0.0)).to(dtype)
        b = a
    else:  # two scales: the positive mask and minus the negative mask
        a = pos_w.to(dtype)
        b = tl.where(neg_w, -1.0, 0.0).to(dtype)
    return a, b


@triton.jit
def _slope_product(a, b, xj, pos_scale, neg_scale, ratio, SLOPES: tl.constexpr):
    """W_IJ x_J [BLOCK_N, BLOCK_G] in float32 from the operands of _slope_operands."""
    if SLOPES == 0:
        return tl.dot(a, xj, input_precision="ieee")
    elif SLOPES == 1:
        return tl.dot(a, xj) * pos_scale
    else:  # neg_scale (ratio P x_J - Q x_J), ratio = pos_scale / neg_scale: one accumulator
        return tl.dot(b, xj, tl.dot(a, xj) * ratio) * neg_scale


@triton.jit
def _non_finite_columns(xj):
    """[BLOCK_G] float32: NaN in the columns where xj [BLOCK_M, BLOCK_G] holds inf or NaN, else
    0. The reference's sum_j G_ij x_j multiplies the structural zeros of its triangular slope
    matrix by every x_j, so one non-finite entry makes its whole gradient column NaN; the kernel's
    symmetric W may hold no zero against it (and give +-inf), so the NaN is added explicitly."""
    return tl.sum(xj.to(tl.float32) * 0.0, axis=0)


@triton.jit
def _hinge_grad_kernel(
    x_ptr,  # [N, D], any strides
    labels_ptr,  # [N] int64
    margins_ptr,  # [4] float32: Mp, Mn, s, d
    scales_ptr,  # [3] float64: the positive and negative scales and their ratio
    part_ptr,  # [row blocks] float64: the scaled hinge terms of each row block
    grad_ptr,  # [N, D] contiguous, x's dtype
    work_ptr,  # [N, D] contiguous float32: sum_J W_IJ x_J (unused when IN_REGS)
    N,
    D,
    stride_xn,
    stride_xd,
    stride_l,
    chunks_per_split,
    SLOPES: tl.constexpr,
    IN_REGS: tl.constexpr,  # the program's D range is one BLOCK_G chunk, kept in registers
    EVEN_D: tl.constexpr,
    EVEN_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows, rows_in, x_rows, row_labels, x_sq = row_block(
        pid_n * BLOCK_N, N, x_ptr, stride_xn, stride_xd, labels_ptr, stride_l, D, EVEN_D, BLOCK_N, BLOCK_D
    )
    row_ok = rows < N
    mp = tl.load(margins_ptr)
    mn = tl.load(margins_ptr + 1)
    pos_scale = tl.load(scales_ptr).to(tl.float32)
    neg_scale = tl.load(scales_ptr + 1).to(tl.float32)
    ratio = tl.load(scales_ptr + 2).to(tl.float32)

    num_chunks = tl.cdiv(D, BLOCK_G)
    chunk_begin = split * chunks_per_split
    chunk_end = tl.minimum(chunk_begin + chunks_per_split, num_chunks)
    offs_g = tl.arange(0, BLOCK_G)
    g_first = chunk_begin * BLOCK_G + offs_g  # the IN_REGS chunk
    work_rows = work_ptr + rows_in[:, None] * D
    grad_rows = grad_ptr + rows_in[:, None] * D

    product = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)  # sum_J W_IJ x_J when IN_REGS
    pos_active = tl.zeros([BLOCK_N], tl.int32)  # rowsum(W) = pos_scale pos_active - neg_scale neg_active
    neg_active = tl.zeros([BLOCK_N], tl.int32)
    loss_total = tl.full([], 0.0, tl.float64)
    for tile in range(0, tl.cdiv(N, BLOCK_M)):
        cols = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        col_ok = cols < N
        cols_in = tl.minimum(cols, N - 1).to(tl.int64)
        x_cols = x_ptr + cols_in[:, None] * stride_xn
        dots, c_sq = dot_tile(x_rows, x_cols, stride_xd, stride_xd, D, EVEN_D, BLOCK_N, BLOCK_M, BLOCK_D)
        raw = (x_sq[:, None] + c_sq[None, :]) - 2.0 * dots
        dist = clamp_min(raw)
        col_labels = tl.load(labels_ptr + cols_in * stride_l)
        same = row_labels[:, None] == col_labels[None, :]
        other = (cols[None, :] != rows[:, None]) & col_ok[None, :]
        pos_hinge = dist - mp
        neg_hinge = mn - dist
        # A hinge is active unless its argument is <= 0: a NaN argument is active, as in
        # torch.relu's gradient (and its term is NaN).
        pos_hit = other & same & ~(pos_hinge <= 0.0)
        neg_hit = other & ~same & ~(neg_hinge <= 0.0)
        upper = cols[None, :] > rows[:, None]
        terms = tl.where(pos_hit & upper, pos_hinge * pos_scale, 0.0)
        terms = tl.where(neg_hit & upper, neg_hinge * neg_scale, terms)
        loss_total += tl.sum(terms).to(tl.float64)
        # The clamp passes no gradient where it bit, nor where the distance is NaN (as
        # torch.clamp's gradient: where(raw >= eps, grad, 0)).
        live = raw >= DISTANCE_EPS
        pos_w = pos_hit & live
        neg_w = neg_hit & live
        pos_active += tl.sum(pos_w.to(tl.int32), axis=1)
        neg_active += tl.sum(neg_w.to(tl.int32), axis=1)
        a, b = _slope_operands(pos_w, neg_w, pos_scale, neg_scale, x_ptr.dtype.element_ty, SLOPES)
        if IN_REGS:
            xj = _load_block(x_cols, g_first, stride_xd, D, EVEN_G)
            product += _slope_product(a, b, xj, pos_scale, neg_scale, ratio, SLOPES) + _non_finite_columns(xj)[None, :]
        else:
            for chunk in range(chunk_begin, chunk_end):
                g = chunk * BLOCK_G + offs_g
                xj = _load_block(x_cols, g, stride_xd, D, EVEN_G)
                step = _slope_product(a, b, xj, pos_scale, neg_scale, ratio, SLOPES) + _non_finite_columns(xj)[None, :]
                w_ptrs = work_rows + g[None, :]
                w_ok = row_ok[:, None] & (g < D)[None, :]
                # The first tile writes the workspace: no zero fill before the kernel.
                running = tl.load(w_ptrs, mask=w_ok & (tile > 0), other=0.0)
                tl.store(w_ptrs, running + step, mask=w_ok)
            tl.debug_barrier()

    tl.store(part_ptr + pid_n, loss_total, mask=split == 0)
    row_sum = pos_active.to(tl.float32) * pos_scale - neg_active.to(tl.float32) * neg_scale
    if IN_REGS:
        xi = _load_block(x_rows, g_first, stride_xd, D, EVEN_G).to(tl.float32)
        grad = 2.0 * (row_sum[:, None] * xi - product)
        g_ok = row_ok[:, None] & (g_first < D)[None, :]
        tl.store(grad_rows + g_first[None, :], grad.to(grad_ptr.dtype.element_ty), mask=g_ok)
    else:
        for chunk in range(chunk_begin, chunk_end):
            g = chunk * BLOCK_G + offs_g
            g_ok = row_ok[:, None] & (g < D)[None, :]
            running = tl.load(work_rows + g[None, :], mask=g_ok, other=0.0)
            xi = _load_block(x_rows, g, stride_xd, D, EVEN_G).to(tl.float32)
            grad = 2.0 * (row_sum[:, None] * xi - running)
            tl.store(grad_rows + g[None, :], grad.to(grad_ptr.dtype.element_ty), mask=g_ok)


def _float_bits(value: float) -> int:
    """The bit pattern of a float64, as a signed int64 kernel scalar."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


class Plan(NamedTuple):
    """Tile sizes and splits, from the problem size alone."""

    block: int  # rows and columns of a pair tile (and of the gradient kernel's tiles)
    block_d: int  # D per dot step
    splits: int  # programs per row block in the pair kernels
    tiles_per_split: int
    block_g: int  # gradient columns per step
    grad_splits: int  # programs per row block in the gradient kernel, each a range of D
    chunks_per_split: int  # BLOCK_G chunks per gradient program (1: kept in registers)
    num_warps: int
    row_blocks: int  # row blocks (and column tiles) of the distance matrix


def plan(N: int, D: int, dtype: torch.dtype) -> Plan:
    """The configuration adaptive_margin_forward uses for x [N, D] of `dtype`."""
    N, D = int(N), int(D)
    check_index_limit("adaptive_margin", "D", D)
    if N > MAX_ROWS:
        raise ValueError(
            f"adaptive_margin (Triton): N = {N} exceeds {MAX_ROWS} rows (2^25), the limit of its exact pair counts"
        )
    max_block, max_d, max_g, num_warps = _TILES[dtype]
    # Every tl.dot dimension is at least MIN_DOT_BLOCK (the tables' maxima are too).
    block = min(max_block, max(MIN_DOT_BLOCK, triton.next_power_of_2(N)))
    block_d = min(max_d, max(MIN_DOT_BLOCK, triton.next_power_of_2(D)))
    row_blocks = triton.cdiv(max(N, 1), block)
    splits = max(1, min(row_blocks, triton.cdiv(_TARGET_PROGRAMS, row_blocks)))
    tiles_per_split = triton.cdiv(row_blocks, splits)
    splits = triton.cdiv(row_blocks, tiles_per_split)  # no split without tiles in row block 0
    block_g = min(max_g, max(MIN_DOT_BLOCK, triton.next_power_of_2(D)))
    num_chunks = triton.cdiv(max(D, 1), block_g)
    grad_splits = max(1, min(num_chunks, _MAX_GRAD_SPLITS, triton.cdiv(_GRAD_TARGET_PROGRAMS, row_blocks)))
    chunks_per_split = triton.cdiv(num_chunks, grad_splits)
    grad_splits = triton.cdiv(num_chunks, chunks_per_split)
    return Plan(block, block_d, splits, tiles_per_split, block_g, grad_splits, chunks_per_split, num_warps, row_blocks)


class Buffers(NamedTuple):
    """The outputs and the device workspaces of one forward."""

    loss: torch.Tensor  # [] float32
    margins: torch.Tensor  # [4] float32: Mp, Mn, s, d
    grad: torch.Tensor  # [N, D] contiguous in x's dtype, or [0, D]
    sums: torch.Tensor  # [3 * pair programs] float64: pass 1's partials
    scales: torch.Tensor  # [3] float64: the positive and negative scales, their ratio
    loss_parts: torch.Tensor  # float64: one per pass-2 program (per row block with the gradient)
    work: torch.Tensor  # [N, D] float32 running W x (the gradient itself for float32 x), or empty


def allocate(x: torch.Tensor, compute_grad: bool) -> Buffers:
    """The outputs and workspaces for x [N, D] (see Buffers)."""
    N, D = x.shape
    cfg = plan(N, D, x.dtype)
    device = x.device
    pair_programs = cfg.row_blocks * cfg.splits

    def f64(n):
        return torch.empty((n,), dtype=torch.float64, device=device)

    if compute_grad:
        grad = torch.empty((N, D), dtype=x.dtype, device=device)
        if cfg.chunks_per_split == 1:
            work = torch.empty((0,), dtype=torch.float32, device=device)
        elif x.dtype == torch.float32:
            work = grad
        else:
            work = torch.empty((N, D), dtype=torch.float32, device=device)
        loss_parts = f64(cfg.row_blocks)
    else:
        grad = torch.empty((0, D), dtype=x.dtype, device=device)
        work = torch.empty((0,), dtype=torch.float32, device=device)
        loss_parts = f64(pair_programs)
    return Buffers(
        loss=torch.empty((), dtype=torch.float32, device=device),
        margins=torch.empty((4,), dtype=torch.float32, device=device),
        grad=grad,
        sums=f64(3 * pair_programs),
        scales=f64(3),
        loss_parts=loss_parts,
        work=work,
    )


def pair_launch(x: torch.Tensor, labels: torch.Tensor, buffers: Buffers, hinge: bool) -> Launch:
    """Pass 1 (hinge=False: sums and counts into buffers.sums) or pass 2 without the gradient
    (hinge=True: the scaled hinge terms into buffers.loss_parts)."""
    N, D = x.shape
    cfg = plan(N, D, x.dtype)
    return Launch(
        kernel=_pair_tiles_kernel,
        grid=(cfg.row_blocks, cfg.splits),
        args=dict(
            x_ptr=x, labels_ptr=labels, margins_ptr=buffers.margins, scales_ptr=buffers.scales,
            part_ptr=buffers.loss_parts if hinge else buffers.sums,
            N=N, D=D, stride_xn=x.stride(0), stride_xd=x.stride(1), stride_l=labels.stride(0),
            tiles_per_split=cfg.tiles_per_split,
        ),
        constexprs=dict(HINGE=bool(hinge), EVEN_D=D % cfg.block_d == 0, BLOCK=cfg.block, BLOCK_D=cfg.block_d),
        num_warps=cfg.num_warps,
    )


def margins_launch(N: int, buffers: Buffers, mu: float, gamma: float, reduction: str) -> Launch:
    """The margins and scales from pass 1's partials (one program)."""
    return Launch(
        kernel=_margins_kernel,
        grid=(1,),
        args=dict(
            sums_ptr=buffers.sums, margins_ptr=buffers.margins, scales_ptr=buffers.scales,
            num_parts=buffers.sums.shape[0] // 3, num_pairs=int(N) * (int(N) - 1) // 2,
            mu_bits=_float_bits(mu), gamma_bits=_float_bits(gamma),
        ),
        constexprs=dict(REDUCTION=REDUCTIONS.index(reduction), BLOCK_P=_REDUCE_BLOCK),
        num_warps=_REDUCE_NUM_WARPS,
    )


def grad_launch(x: torch.Tensor, labels: torch.Tensor, buffers: Buffers, reduction: str) -> Launch:
    """Pass 2 with the gradient: the hinge terms per row block and buffers.grad."""
    N, D = x.shape
    cfg = plan(N, D, x.dtype)
    if x.dtype == torch.float32:
        slopes = _SLOPES_FLOAT32
    else:
        slopes = _SLOPES_MASKS if reduction == "balanced" else _SLOPES_SIGN
    in_regs = cfg.chunks_per_split == 1
    return Launch(
        kernel=_hinge_grad_kernel,
        grid=(cfg.row_blocks, cfg.grad_splits),
        args=dict(
            x_ptr=x, labels_ptr=labels, margins_ptr=buffers.margins, scales_ptr=buffers.scales,
            part_ptr=buffers.loss_parts, grad_ptr=buffers.grad,
            work_ptr=buffers.grad if in_regs else buffers.work,
            N=N, D=D, stride_xn=x.stride(0), stride_xd=x.stride(1), stride_l=labels.stride(0),
            chunks_per_split=cfg.chunks_per_split,
        ),
        constexprs=dict(
            SLOPES=slopes,
            IN_REGS=in_regs,
            EVEN_D=D % cfg.block_d == 0,
            EVEN_G=D > 0 and D % cfg.block_g == 0,  # D = 0: masked loads read nothing
            BLOCK_N=cfg.block,
            BLOCK_M=cfg.block,
            BLOCK_D=cfg.block_d,
            BLOCK_G=cfg.block_g,
        ),
        num_warps=cfg.num_warps,
    )


def loss_launch(buffers: Buffers) -> Launch:
    """The loss from pass 2's partials (one program)."""
    return Launch(
        kernel=_loss_kernel,
        grid=(1,),
        args=dict(part_ptr=buffers.loss_parts, loss_ptr=buffers.loss, num_parts=buffers.loss_parts.shape[0]),
        constexprs=dict(BLOCK_P=_REDUCE_BLOCK),
        num_warps=_REDUCE_NUM_WARPS,
    )


def forward_launches(
    x: torch.Tensor,
    labels: torch.Tensor,
    mu: float,
    gamma: float,
    reduction: str,
    compute_grad: bool,
    buffers: Buffers,
) -> list[Launch]:
    """The four launches of one forward, in order, writing `buffers` (from `allocate`)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    second = grad_launch(x, labels, buffers, reduction) if compute_grad else pair_launch(x, labels, buffers, True)
    return [
        pair_launch(x, labels, buffers, False),
        margins_launch(x.shape[0], buffers, mu, gamma, reduction),
        second,
        loss_launch(buffers),
    ]


def adaptive_margin_forward(
    x: torch.Tensor,
    labels: torch.Tensor,
    mu: float,
    gamma: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adaptive-margin loss of a batch (see the module docstring).

    x [N, D] (float32, float16 or bfloat16, any strides; TypeError otherwise) with int64 labels
    [N], at least one positive and one negative pair (N < 3 raises ValueError; the rest is the
    caller's to check); mu, gamma > 0; reduction "mean", "sum" or "balanced" (ValueError
    otherwise). Returns the loss (0-d float32), the margins [4] float32 (Mp, Mn, s, d)
    and, when compute_grad, dloss/dx [N, D] in x's dtype (else an empty [0, D] tensor).
    """
    if x.dtype not in _TILES:
        raise TypeError(f"adaptive_margin (Triton): x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.shape[0] < 3:  # the kernels clamp rows to N - 1
        raise ValueError(
            f"adaptive_margin (Triton): a batch with a positive and a negative pair has N >= 3 rows, got {x.shape[0]}"
        )
    buffers = allocate(x, compute_grad)
    for launch in forward_launches(x, labels, mu, gamma, reduction, compute_grad, buffers):
        run_launch(launch)
    return buffers.loss, buffers.margins, buffers.grad

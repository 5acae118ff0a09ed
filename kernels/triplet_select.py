"""Triton kernels of triplet_select: per anchor, the k-th largest positive and the p-th smallest
negative distance against a reference set, without materialising the N x M distance matrix.

Semantics (reidfast.ops.triplet_select is the specification). For x [N, D] with labels [N] and a
reference set ref [M, D] with ref_labels [M] (x itself when self_reference, where the pair (i, i)
is the anchor's own positive at distance exactly 0):

    d(i, j) = sqrt(max(|x_i|^2 + |r_j|^2 - 2 x_i.r_j, 1e-12))   (squared: without the sqrt),

computed in float32; pos = the min(k, #positives)-th largest over ref_labels[j] == labels[i],
neg = the min(p, #negatives)-th smallest over the others, ties (equal distances, two NaNs) to
the lower index, NaN ranking as the largest distance; (-inf, -1) / (+inf, -1) when there is no
such candidate. This is the rule of csrc/triplet_select.h, a strict total order on candidates.

Keys. A candidate (distance, index) is packed into one int64 key whose signed order is the rank
order, so that every comparison, reduction and merge is a plain integer minimum: the high word is
the float32 bit pattern of the distance (all distances are >= +0, where the bit pattern is
monotone; NaN is canonicalised to 0x7FC00000, above +inf), complemented (0x7FFFFFFF - bits,
computed as bits ^ 0x7FFFFFFF) for positives, and the low word is the column index. Real keys are
>= 0; a list slot without a candidate holds _EMPTY - slot (above every real key, distinct per
slot) and _SENTINEL marks "not a candidate" in a tile. The selected distance is decoded from the
key's bits, so it is exactly the float32 value that was ranked.

Design. Program (row block, split) owns BLOCK_N anchors and a contiguous range of column tiles.

* Distances (kernels/_distance.py): per column tile, acc[BLOCK_N, BLOCK_M] = x_blk @ ref_tile^T
  by tl.dot over BLOCK_D chunks of D (float32: input_precision="ieee", so the products match a
  float32 matmul; float16 and bfloat16: tensor cores, float32 accumulation). The anchors' squared
  norms are summed once in a prologue pass over D, the tile's reference norms in the same loop as
  the dot, both in float32 from the loaded values. Then s = (|x|^2 + |r|^2) - 2 acc (2 acc is
  exact, so a fused multiply-add gives the same value), clamped with NaN propagating,
  square-rooted with sqrt_rn (correctly rounded, as torch's). The distance tile lives in
  registers only.
* Selection: each anchor row keeps its k best positive keys and p best negative keys in
  registers, as [BLOCK_N, K_WIDTH] and [BLOCK_N, P_WIDTH] tensors (widths: powers of two >= k
  and >= p, at most 32; slots past k or p hold -1, never chosen for replacement), unsorted, with
  the worst kept key (the row maximum: the current k-th) as the admission threshold. A tile is
  offered by one row-minimum over its candidate keys: if no row's best beats its threshold (the
  common case once the lists are full) the tile costs that one reduction per list and nothing
  else. Otherwise a loop extracts each row's best remaining candidate, replaces the row's worst
  key with it where it is better, and repeats while any row admits one (at most k rounds per
  tile: after that many a row's list holds only keys at least as good as the rest of the
  tile). Width 1 (k or p == 1, batch-hard) is a running minimum with no loop.
  At the end the selected candidate is the row's worst real key: the k-th when there were at
  least k positives, else the last of them (k_eff = min(k, count)), else none.
* Splitting M. With one program per row block, N / BLOCK_N programs can be far fewer than the
  GPU's SMs (N = 1024 against a memory bank of M = 65536 gives 16), so the column tiles are split
  over SPLITS programs per row block, enough for about _TARGET_PROGRAMS programs in all. Each
  then writes its lists (keys, K_WIDTH + P_WIDTH per row) to an int64 workspace [N, SPLITS *
  width], and a second small kernel merges a row's SPLITS partial lists by offering them as
  candidate tiles to the same selection (keys carry their index, and the rank order is total, so
  the merge order does not matter) and writes the result. With one split the selection kernel
  writes the result itself and there is no workspace.

Tiles (_TILES, per dtype). 64 reference rows per tile and 8 warps; for float32 32 anchors and
D steps of 16 (the "ieee" dot runs on FMA units and holds both operands' K slice in registers;
16 is the smallest K that Triton before 3.4 accepts, MIN_DOT_BLOCK, and 64 anchors at that K
spill on sm_90), for 16-bit types 64 anchors and D steps of 64 (128 bytes of a row). These
sizes keep the selection kernel free of register spills up to k = p = 32 on sm_80 and sm_90,
and for float32 on sm_75 (tests/test_triplet_select_triton_aot.py; float32 uses 105 to 196
registers per thread); they were chosen for that fit, not by timing. The merge kernel takes 32
rows per program and 32 partial keys per step. Dimensions below a tile are rounded up to a power
of two >= 16.

Loads. Out-of-range anchors and reference rows are clamped to the last row (their results are
masked out), so only a D that is not a multiple of BLOCK_D needs load masks. Pointer offsets are
int64 (a 2^20 x 2048 memory bank, 2^31 elements, is addressed correctly); row and column indices
are int32, so N, M and D are at most INDEX_LIMIT = 2^31 - 1025 (ValueError from `plan` beyond;
a key's low word holds the column index).

Limits. k, p <= 32 (_MAX_RANK; larger ranks raise ValueError and are served elsewhere). A
distance tile is recomputed from x and ref for every row block, as in any GEMM; x and ref are
read through L2. Arguments (shapes, dtypes, devices, k, p >= 1) are validated by the caller;
labels may be any int64 tensors (compared for equality only). Tile sizes and the split depend
on N, M and D, so dynamic sizes under torch.compile are specialised (guarded).
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from reidfast.kernels._distance import clamp_min, dot_tile, row_block
from reidfast.kernels._launch import MIN_DOT_BLOCK, Launch, check_index_limit, run_launch

_MAX_RANK = 32
# Column tiles are split across programs until about this many programs run (a few per SM).
_TARGET_PROGRAMS = 512
# Tiles per dtype: (anchors per program, reference rows per tile, D per dot step, warps).
_TILES = {
    torch.float32: (32, 64, 16, 8),
    torch.float16: (64, 64, 64, 8),
    torch.bfloat16: (64, 64, 64, 8),
}
# The merge kernel: rows per program and partial keys per step.
_MERGE_BLOCK_R = 32
_MERGE_BLOCK_C = 32
_MERGE_NUM_WARPS = 4

_SENTINEL = tl.constexpr(2**63 - 1)  # not a candidate
_EMPTY = tl.constexpr(2**63 - 2)  # slot s of a list holds _EMPTY - s until a candidate enters
_REAL_END = tl.constexpr(2**63 - 2 - 2 * _MAX_RANK)  # real keys lie in [0, _REAL_END)
_NAN_BITS = tl.constexpr(0x7FC00000)
_BITS_MAX = tl.constexpr(0x7FFFFFFF)
_LOW_WORD = tl.constexpr(0xFFFFFFFF)


@triton.jit
def _init_list(BLOCK: tl.constexpr, WIDTH: tl.constexpr, count):
    """An empty selection of `count` (<= WIDTH) keys per row and its threshold (the worst key)."""
    if WIDTH == 1:
        keys = tl.full([BLOCK], _EMPTY, tl.int64)
        threshold = keys
    else:
        slot = tl.arange(0, WIDTH)
        # Active slots hold distinct empty markers, the others -1 (never the row maximum).
        row = tl.where(slot < count, _EMPTY + -slot.to(tl.int64), -1)
        keys = tl.broadcast_to(row[None, :], [BLOCK, WIDTH])
        threshold = tl.max(keys, axis=1)
    return keys, threshold


@triton.jit
def _offer(keys, threshold, cand, WIDTH: tl.constexpr):
    """Fold candidate keys cand [BLOCK, C] (_SENTINEL for none) into each row's selection."""
    best = tl.min(cand, axis=1)
    if WIDTH == 1:
        keys = tl.minimum(keys, best)
        threshold = keys
    else:
        admit = best < threshold
        while tl.max(admit.to(tl.int32), axis=0) > 0:
            # The worst kept key is unique (keys are distinct), so exactly one slot is replaced.
            replace = (keys == threshold[:, None]) & admit[:, None]
            keys = tl.where(replace, best[:, None], keys)
            threshold = tl.max(keys, axis=1)
            cand = tl.where(cand == best[:, None], _SENTINEL, cand)
            best = tl.min(cand, axis=1)
            admit = best < threshold
    return keys, threshold


@triton.jit
def _finish(keys, LARGEST: tl.constexpr, WIDTH: tl.constexpr):
    """(float32 distance, int64 index) of each row's worst real key, or (-inf / +inf, -1)."""
    if WIDTH == 1:
        worst = keys
    else:
        real = (keys >= 0) & (keys < _REAL_END)
        worst = tl.max(tl.where(real, keys, -1), axis=1)
    found = (worst >= 0) & (worst < _REAL_END)
    bits = (worst >> 32).to(tl.int32)
    if LARGEST:
        bits = bits ^ _BITS_MAX
    dist = bits.to(tl.float32, bitcast=True)
    if LARGEST:
        dist = tl.where(found, dist, float("-inf"))
    else:
        dist = tl.where(found, dist, float("inf"))
    index = tl.where(found, worst & _LOW_WORD, -1)
    return dist, index


@triton.jit
def _store_partial(part_ptr, keys, rows, row_ok, split, num_splits, BLOCK: tl.constexpr, WIDTH: tl.constexpr):
    """Write a program's selection to row `rows` of the workspace [N, num_splits * WIDTH]."""
    row_base = part_ptr + rows.to(tl.int64) * (num_splits * WIDTH) + split * WIDTH
    if WIDTH == 1:
        tl.store(row_base, keys, mask=row_ok)
    else:
        slot = tl.arange(0, WIDTH)
        tl.store(row_base[:, None] + slot[None, :], keys, mask=row_ok[:, None])


@triton.jit
def _store_result(dist_ptr, index_ptr, keys, rows, row_ok, LARGEST: tl.constexpr, WIDTH: tl.constexpr):
    dist, index = _finish(keys, LARGEST, WIDTH)
    tl.store(dist_ptr + rows, dist.to(dist_ptr.dtype.element_ty), mask=row_ok)
    tl.store(index_ptr + rows, index, mask=row_ok)


@triton.jit
def _triplet_select_kernel(
    x_ptr,  # [N, D], any strides
    ref_ptr,  # [M, D], any strides, x's dtype
    labels_ptr,  # [N] int64
    ref_labels_ptr,  # [M] int64
    pos_dist_ptr,  # [N] contiguous, x's dtype (unused when SPLIT)
    neg_dist_ptr,
    pos_index_ptr,  # [N] contiguous int64 (unused when SPLIT)
    neg_index_ptr,
    part_pos_ptr,  # [N, SPLITS * K_WIDTH] int64 workspace (unused unless SPLIT)
    part_neg_ptr,  # [N, SPLITS * P_WIDTH] int64 workspace (unused unless SPLIT)
    N,
    M,
    D,
    K,
    P,
    stride_xn,
    stride_xd,
    stride_rn,
    stride_rd,
    stride_l,
    stride_rl,
    tiles_per_split,
    SELF: tl.constexpr,  # ref is x: the pair (i, i) has distance 0
    SQUARED: tl.constexpr,
    SPLIT: tl.constexpr,  # write partial selections for the merge kernel
    EVEN_D: tl.constexpr,  # D is a multiple of BLOCK_D: no load masks
    K_WIDTH: tl.constexpr,
    P_WIDTH: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows, _, x_rows, anchor_labels, x_sq = row_block(
        pid_n * BLOCK_N, N, x_ptr, stride_xn, stride_xd, labels_ptr, stride_l, D, EVEN_D, BLOCK_N, BLOCK_D
    )
    row_ok = rows < N

    pos, pos_threshold = _init_list(BLOCK_N, K_WIDTH, K)
    neg, neg_threshold = _init_list(BLOCK_N, P_WIDTH, P)

    num_tiles = tl.cdiv(M, BLOCK_M)
    tile_begin = split * tiles_per_split
    tile_end = tl.minimum(tile_begin + tiles_per_split, num_tiles)
    for tile in range(tile_begin, tile_end):
        cols = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        cols_in = tl.minimum(cols, M - 1).to(tl.int64)
        r_rows = ref_ptr + cols_in[:, None] * stride_rn
        acc, r_sq = dot_tile(x_rows, r_rows, stride_xd, stride_rd, D, EVEN_D, BLOCK_N, BLOCK_M, BLOCK_D)
        sq = (x_sq[:, None] + r_sq[None, :]) - 2.0 * acc
        sq = clamp_min(sq)
        if SQUARED:
            dist = sq
        else:
            dist = tl.sqrt_rn(sq)
        if SELF:
            dist = tl.where(rows[:, None] == cols[None, :], 0.0, dist)

        # Rank keys (see the module docstring); NaN ranks as the largest distance.
        bits = tl.where(dist != dist, _NAN_BITS, dist.to(tl.int32, bitcast=True))
        col_key = cols.to(tl.int64)[None, :]
        ref_labels = tl.load(ref_labels_ptr + cols_in * stride_rl)
        same = anchor_labels[:, None] == ref_labels[None, :]
        col_ok = (cols < M)[None, :]
        pos_cand = tl.where(same & col_ok, ((bits ^ _BITS_MAX).to(tl.int64) << 32) | col_key, _SENTINEL)
        pos, pos_threshold = _offer(pos, pos_threshold, pos_cand, K_WIDTH)
        neg_cand = tl.where(~same & col_ok, (bits.to(tl.int64) << 32) | col_key, _SENTINEL)
        neg, neg_threshold = _offer(neg, neg_threshold, neg_cand, P_WIDTH)

    if SPLIT:
        num_splits = tl.num_programs(1)
        _store_partial(part_pos_ptr, pos, rows, row_ok, split, num_splits, BLOCK_N, K_WIDTH)
        _store_partial(part_neg_ptr, neg, rows, row_ok, split, num_splits, BLOCK_N, P_WIDTH)
    else:
        _store_result(pos_dist_ptr, pos_index_ptr, pos, rows, row_ok, True, K_WIDTH)
        _store_result(neg_dist_ptr, neg_index_ptr, neg, rows, row_ok, False, P_WIDTH)


@triton.jit
def _merge_partials(
    part_ptr, rows, row_ok, count, rank, WIDTH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    """The selection over the `count` partial keys of each row of the workspace [N, count]."""
    keys, threshold = _init_list(BLOCK_R, WIDTH, rank)
    row_base = part_ptr + rows.to(tl.int64)[:, None] * count
    for c0 in range(0, count, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cand = tl.load(row_base + c[None, :], mask=row_ok[:, None] & (c < count)[None, :], other=_SENTINEL)
        # Empty and inactive slots of the partial lists are not candidates.
        cand = tl.where((cand >= 0) & (cand < _REAL_END), cand, _SENTINEL)
        keys, threshold = _offer(keys, threshold, cand, WIDTH)
    return keys


@triton.jit
def _triplet_merge_kernel(
    part_pos_ptr,  # [N, SPLITS * K_WIDTH] int64
    part_neg_ptr,  # [N, SPLITS * P_WIDTH] int64
    pos_dist_ptr,  # [N] contiguous, x's dtype
    neg_dist_ptr,
    pos_index_ptr,  # [N] contiguous int64
    neg_index_ptr,
    N,
    K,
    P,
    num_splits,
    K_WIDTH: tl.constexpr,
    P_WIDTH: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    pos = _merge_partials(part_pos_ptr, rows, row_ok, num_splits * K_WIDTH, K, K_WIDTH, BLOCK_R, BLOCK_C)
    _store_result(pos_dist_ptr, pos_index_ptr, pos, rows, row_ok, True, K_WIDTH)
    neg = _merge_partials(part_neg_ptr, rows, row_ok, num_splits * P_WIDTH, P, P_WIDTH, BLOCK_R, BLOCK_C)
    _store_result(neg_dist_ptr, neg_index_ptr, neg, rows, row_ok, False, P_WIDTH)


class Plan(NamedTuple):
    """Tile sizes and the split of the column tiles, from the problem size alone."""

    block_n: int
    block_m: int
    block_d: int
    splits: int  # programs per row block; > 1: partial selections and a merge kernel
    tiles_per_split: int
    k_width: int
    p_width: int
    num_warps: int


def plan(N: int, M: int, D: int, dtype: torch.dtype, k: int, p: int) -> Plan:
    """The configuration triplet_select_forward uses for these sizes (k, p <= _MAX_RANK)."""
    if not (1 <= k <= _MAX_RANK and 1 <= p <= _MAX_RANK):
        raise ValueError(f"triplet_select (Triton): k and p must lie in [1, {_MAX_RANK}], got k={k}, p={p}")
    N, M, D = int(N), int(M), int(D)
    for name, size in (("N", N), ("M", M), ("D", D)):
        check_index_limit("triplet_select", name, size)
    max_n, max_m, max_d, num_warps = _TILES[dtype]
    # Every tl.dot dimension is at least MIN_DOT_BLOCK (the tables' maxima are too).
    block_n = min(max_n, max(MIN_DOT_BLOCK, triton.next_power_of_2(N)))
    block_m = min(max_m, max(MIN_DOT_BLOCK, triton.next_power_of_2(M)))
    block_d = min(max_d, max(MIN_DOT_BLOCK, triton.next_power_of_2(D)))
    num_tiles = triton.cdiv(M, block_m)
    row_blocks = triton.cdiv(max(N, 1), block_n)
    splits = max(1, min(num_tiles, triton.cdiv(_TARGET_PROGRAMS, row_blocks)))
    tiles_per_split = max(1, triton.cdiv(num_tiles, splits))
    splits = max(1, triton.cdiv(num_tiles, tiles_per_split))  # no split without tiles
    k_width, p_width = triton.next_power_of_2(k), triton.next_power_of_2(p)
    return Plan(block_n, block_m, block_d, splits, tiles_per_split, k_width, p_width, num_warps)


def workspace(x: torch.Tensor, ref: torch.Tensor, k: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The int64 partial-selection buffers [N, splits * width] for positives and negatives (empty
    when the column tiles are not split)."""
    cfg = plan(x.shape[0], ref.shape[0], x.shape[1], x.dtype, k, p)
    if cfg.splits == 1:
        empty = torch.empty((0,), dtype=torch.int64, device=x.device)
        return empty, empty
    N = x.shape[0]
    return (
        torch.empty((N, cfg.splits * cfg.k_width), dtype=torch.int64, device=x.device),
        torch.empty((N, cfg.splits * cfg.p_width), dtype=torch.int64, device=x.device),
    )


def forward_launch(
    x: torch.Tensor,
    labels: torch.Tensor,
    ref: torch.Tensor,
    ref_labels: torch.Tensor,
    pos_dist: torch.Tensor,
    neg_dist: torch.Tensor,
    pos_index: torch.Tensor,
    neg_index: torch.Tensor,
    part_pos: torch.Tensor,
    part_neg: torch.Tensor,
    self_reference: bool,
    k: int,
    p: int,
    squared: bool,
) -> Launch:
    """The selection launch for x [N, D] (N >= 1) against ref [M, D]; part_pos and part_neg come
    from `workspace` (the launch writes them instead of the outputs when they are not empty)."""
    N, D = x.shape
    M = ref.shape[0]
    cfg = plan(N, M, D, x.dtype, k, p)
    stride_xn, stride_xd = x.stride()
    stride_rn, stride_rd = ref.stride()
    return Launch(
        kernel=_triplet_select_kernel,
        grid=(triton.cdiv(N, cfg.block_n), cfg.splits),
        args=dict(
            x_ptr=x, ref_ptr=ref, labels_ptr=labels, ref_labels_ptr=ref_labels,
            pos_dist_ptr=pos_dist, neg_dist_ptr=neg_dist,
            pos_index_ptr=pos_index, neg_index_ptr=neg_index,
            part_pos_ptr=part_pos, part_neg_ptr=part_neg,
            N=N, M=M, D=D, K=int(k), P=int(p),
            stride_xn=stride_xn, stride_xd=stride_xd, stride_rn=stride_rn, stride_rd=stride_rd,
            stride_l=labels.stride(0), stride_rl=ref_labels.stride(0),
            tiles_per_split=cfg.tiles_per_split,
        ),
        constexprs=dict(
            SELF=bool(self_reference),
            SQUARED=bool(squared),
            SPLIT=cfg.splits > 1,
            EVEN_D=D % cfg.block_d == 0,
            K_WIDTH=cfg.k_width,
            P_WIDTH=cfg.p_width,
            BLOCK_N=cfg.block_n,
            BLOCK_M=cfg.block_m,
            BLOCK_D=cfg.block_d,
        ),
        num_warps=cfg.num_warps,
    )


def merge_launch(
    part_pos: torch.Tensor,
    part_neg: torch.Tensor,
    pos_dist: torch.Tensor,
    neg_dist: torch.Tensor,
    pos_index: torch.Tensor,
    neg_index: torch.Tensor,
    k: int,
    p: int,
) -> Launch:
    """The launch merging the partial selections of `workspace` into the outputs [N]."""
    N = pos_dist.shape[0]
    k_width, p_width = triton.next_power_of_2(k), triton.next_power_of_2(p)
    num_splits = part_pos.shape[1] // k_width
    return Launch(
        kernel=_triplet_merge_kernel,
        grid=(triton.cdiv(N, _MERGE_BLOCK_R),),
        args=dict(
            part_pos_ptr=part_pos, part_neg_ptr=part_neg,
            pos_dist_ptr=pos_dist, neg_dist_ptr=neg_dist,
            pos_index_ptr=pos_index, neg_index_ptr=neg_index,
            N=N, K=int(k), P=int(p), num_splits=num_splits,
        ),
        constexprs=dict(
            K_WIDTH=k_width,
            P_WIDTH=p_width,
            BLOCK_R=_MERGE_BLOCK_R,
            BLOCK_C=min(_MERGE_BLOCK_C, max(16, triton.next_power_of_2(num_splits * max(k_width, p_width)))),
        ),
        num_warps=_MERGE_NUM_WARPS,
    )


def triplet_select_forward(
    x: torch.Tensor,
    labels: torch.Tensor,
    ref: torch.Tensor,
    ref_labels: torch.Tensor,
    self_reference: bool,
    k: int,
    p: int,
    squared: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Select each anchor's pair (see the module docstring).

    x [N, D] (float32, float16 or bfloat16, any strides) with int64 labels [N]; ref [M, D] of
    x's dtype and device (x itself when self_reference) with int64 ref_labels [M]; 1 <= k, p <= 32
    (ValueError otherwise). Returns pos_dist, neg_dist [N] in x's dtype and pos_index, neg_index
    [N] int64.
    """
    if not (1 <= k <= _MAX_RANK and 1 <= p <= _MAX_RANK):
        raise ValueError(f"triplet_select (Triton): k and p must lie in [1, {_MAX_RANK}], got k={k}, p={p}")
    N = x.shape[0]
    pos_dist = torch.empty((N,), dtype=x.dtype, device=x.device)
    neg_dist = torch.empty((N,), dtype=x.dtype, device=x.device)
    pos_index = torch.empty((N,), dtype=torch.int64, device=x.device)
    neg_index = torch.empty((N,), dtype=torch.int64, device=x.device)
    if N == 0:
        return pos_dist, neg_dist, pos_index, neg_index
    part_pos, part_neg = workspace(x, ref, k, p)
    outputs = (pos_dist, neg_dist, pos_index, neg_index)
    run_launch(
        forward_launch(
            x, labels, ref, ref_labels, *outputs, part_pos, part_neg, self_reference, k, p, squared
        )
    )
    if part_pos.numel() > 0:
        run_launch(merge_launch(part_pos, part_neg, *outputs, k, p))
    return pos_dist, neg_dist, pos_index, neg_index

"""Triton kernels of pyramid_pool: max and/or average pooling over windows of horizontal stripes.

Geometry. x is [B, C, H, W]. Stripe s of n covers rows [floor(s*H/n), floor((s+1)*H/n)); window i
covers stripes [window_starts[i], window_starts[i] + window_lengths[i]). Windows may overlap and
repeat. The output is [B, NW, C]; the argmax (flat h * W + w of the window's first maximum in
row-major order, NaN counting as larger than any number) is int32 [B, NW, C].

Design. One program owns (b, a block of BLOCK_C channels) and all n stripes of it, so the stripe
statistics never leave registers: there is no scratch buffer and no second pass over x.

* Forward: the stripe loop is unrolled (n is a tl.constexpr). Each stripe is read as 2-D tiles
  [BLOCK_C, BLOCK_HW] over the flat spatial index k = h * W + w. Every lane keeps a running
  float32 maximum, its first position and a float32 sum; once per stripe these are reduced across
  lanes to [BLOCK_C] vectors kept in tuples indexed by stripe. Each window then combines its
  stripes' vectors (the compiler shares the work of windows with a common first or last stripe).
  x is read once; out and argmax are written once.
* Backward: the program reads grad_out (and argmax) once per window and folds them, per stripe,
  into ag = sum of g / count over the windows containing the stripe, mg = sum of g over those
  windows whose argmax lies in the stripe, and spos = that argmax (all such windows share it: a
  window's argmax is the argmax of one of its stripes). It then writes each element of its stripes
  exactly once as ag + (mg where k == spos): no atomics, deterministic.

Tiles (_tile_config). When the spatial axis is contiguous (NCHW), a tile row is a 32-byte run of
one channel (two lanes of 16-byte vectors), so most of each reduction happens within a thread;
loads and stores are 16-byte vectors when every stripe boundary is a multiple of the vector width
(ALIGN). When the channel axis is contiguous (channels_last), a warp's lanes cover 128 channels
and the warps split the positions. Stripes of at most _MAX_STATIC_CHUNKS chunks are unrolled so
that their loads can all be in flight; longer ones use a runtime loop. Registers hold 3 * n
stripe statistics per channel of a thread, which bounds the channels per thread.

Window table. n and each window's first and last stripe are tl.constexpr (an int and two tuples;
Triton 3.8 supports constexpr tuples both compiled and in the interpreter), not a device tensor:
a device table needs a host-to-device copy per call, which CUDA-graph capture cannot record from
pageable memory, while a model's table is fixed, so the one compilation per distinct table is paid
once. The stripe and window loops are unrolled, so very large n or NW compile slowly.

Numerics. Maxima use tl.maximum(..., propagate_nan=ALL) and an explicit first-index search, since
tl.max drops NaN on the GPU. Averages are the float32 sum divided by the element count with
tl.math.div_rn, the correctly rounded IEEE quotient (Triton's `/` is approximate, up to 2 ulp; a
division cannot be contracted into an FMA with the following add either), rounded to the output
dtype once; backward divides each window's gradient by its count the same way.

Limits. Pointer offsets are int64; spatial positions and program ids are int32, so H * W and the
number of programs, B * ceil(C / BLOCK_C), are at most INDEX_LIMIT = 2^31 - 1025 (ValueError
beyond; the argmax is int32 anyway). Arguments (window table within [0, n], 1 <= n <= H,
W >= 1, grad_out and argmax shapes) are validated by the caller. Block sizes depend on C, H, W
and n, so a dynamic C, H or W under torch.compile is specialised (guarded); B stays symbolic.
"""

import torch
import triton
import triton.language as tl

from reidfast.kernels._launch import Launch, check_index_limit, run_launch
from reidfast.ops.enums import POOL_MODES

_NUM_WARPS = 4
# Channels per thread when the channel axis is contiguous. Each holds the running statistics and
# 3 * n stripe statistics in registers, so 4 rather than a 16-byte vector of 16-bit values.
_CHANNEL_VEC = 4
# Channel rows per thread when the spatial axis is contiguous (each row then holds the running
# statistics of 1 to 8 positions), and a cap on channels per program so that a batch still
# spreads over many programs.
_SPATIAL_ROWS_PER_THREAD = 2
_SPATIAL_MAX_BLOCK_C = 128
# Stripes of at most this many chunks are unrolled (more loads in flight, longer code).
_MAX_STATIC_CHUNKS = 32
_INT32_MAX = tl.constexpr(2**31 - 1)


@triton.jit
def _nan_max(a, b):
    """Maximum in which NaN beats every number (tl.max and tl.maximum drop NaN by default)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _stripe_start(s, H, W, N_PARTS: tl.constexpr, ALIGN: tl.constexpr):
    """Flat index k of the first element of stripe s (s == N_PARTS gives H * W)."""
    k = (s * H // N_PARTS) * W
    # H and W may arrive as constexpr 1 (Triton specialises arguments equal to 1); then k is a
    # plain int and ALIGN is 1.
    if ALIGN > 1:
        k = tl.multiple_of(k, ALIGN)
    return k


@triton.jit
def _window_count(
    i: tl.constexpr,
    H,
    W,
    N_PARTS: tl.constexpr,
    WIN_FIRST: tl.constexpr,
    WIN_LAST: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """The number of elements of window i as a float32 scalar, rounded as the reference's float
    element count (exact below 2^24)."""
    last = _stripe_start(WIN_LAST[i] + 1, H, W, N_PARTS, ALIGN)
    # With H and W constexpr 1 the count is a plain int: the float32 zero makes it a tensor.
    return tl.zeros([], tl.float32) + (last - _stripe_start(WIN_FIRST[i], H, W, N_PARTS, ALIGN))


@triton.jit
def _accumulate_chunk(
    x_rows,  # [BLOCK_C, 1] pointers to (b, c, 0, 0)
    k,  # [BLOCK_HW] flat spatial indices of the chunk, ascending
    k_end,  # end of the stripe
    c_mask,
    W,
    stride_xh,
    stride_xw,
    stride_xk,
    lane_max,  # [BLOCK_C, BLOCK_HW] running statistics of each lane
    lane_arg,
    lane_sum,
    HAS_MAX: tl.constexpr,
    HAS_AVG: tl.constexpr,
    STORE_ARGMAX: tl.constexpr,
    FLAT_HW: tl.constexpr,
    EVEN_HW: tl.constexpr,
):
    """Fold one chunk of a stripe into the per-lane running maximum, argmax and sum."""
    if FLAT_HW:
        k_off = k.to(tl.int64) * stride_xk
    else:
        h = k // W
        k_off = h.to(tl.int64) * stride_xh + (k - h * W).to(tl.int64) * stride_xw
    if EVEN_HW:
        v = tl.load(x_rows + k_off[None, :], mask=c_mask[:, None], other=0.0).to(tl.float32)
        v_max = v
    else:
        k_mask = k < k_end
        v = tl.load(
            x_rows + k_off[None, :], mask=c_mask[:, None] & k_mask[None, :], other=0.0
        ).to(tl.float32)
        v_max = tl.where(k_mask[None, :], v, float("-inf"))
    if HAS_MAX:
        if STORE_ARGMAX:
            # A later position takes over only when strictly larger, or NaN over a number
            # (~(v <= m) is "greater or unordered"; m == m is "m is not NaN").
            take = ~(v_max <= lane_max) & (lane_max == lane_max)
            lane_max = tl.where(take, v_max, lane_max)
            lane_arg = tl.where(take, k[None, :], lane_arg)
        else:
            lane_max = _nan_max(lane_max, v_max)
    if HAS_AVG:
        lane_sum += v
    return lane_max, lane_arg, lane_sum


@triton.jit
def _pyramid_pool_fwd_kernel(
    x_ptr,  # [B, C, H, W], any strides
    out_ptr,  # [B, NUM_WINDOWS, C] contiguous, x's dtype
    argmax_ptr,  # [B, NUM_WINDOWS, C] contiguous int32 (unused unless STORE_ARGMAX)
    C,
    H,
    W,
    stride_xb,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_xk,  # stride of the flat spatial index k = h * W + w (used when FLAT_HW)
    N_PARTS: tl.constexpr,
    WIN_FIRST: tl.constexpr,  # tuple: first stripe of each window
    WIN_LAST: tl.constexpr,  # tuple: last stripe (inclusive) of each window
    NUM_WINDOWS: tl.constexpr,
    HAS_MAX: tl.constexpr,
    HAS_AVG: tl.constexpr,
    STORE_ARGMAX: tl.constexpr,
    FLAT_HW: tl.constexpr,  # offset(h, w) == k * stride_xk: no division by W per element
    ALIGN: tl.constexpr,  # every stripe boundary k is a multiple of ALIGN
    EVEN_HW: tl.constexpr,  # every stripe is a whole number of chunks: no spatial masks
    STATIC_CHUNKS: tl.constexpr,  # chunks per stripe when unrolled, 0 for a runtime loop
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    b = pid // num_c_blocks
    c = (pid - b * num_c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    x_rows = x_ptr + b.to(tl.int64) * stride_xb + c.to(tl.int64)[:, None] * stride_xc
    lane = tl.arange(0, BLOCK_HW)

    stripe_max = ()
    stripe_arg = ()
    stripe_sum = ()
    for s in tl.static_range(N_PARTS):
        k_begin = _stripe_start(s, H, W, N_PARTS, ALIGN)
        k_end = _stripe_start(s + 1, H, W, N_PARTS, ALIGN)
        # Per-lane running statistics, reduced across lanes once per stripe. Each lane keeps its
        # first maximum; a lane that only ever sees -inf keeps its first position, so the lane
        # index starts there (INT32_MAX for lanes past a stripe shorter than one chunk).
        lane_max = tl.full([BLOCK_C, BLOCK_HW], float("-inf"), tl.float32)
        first_k = k_begin + lane
        lane_arg = tl.broadcast_to(
            tl.where(first_k < k_end, first_k, _INT32_MAX)[None, :], [BLOCK_C, BLOCK_HW]
        )
        lane_sum = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
        if STATIC_CHUNKS > 0:
            # Unrolled: the chunks' loads do not depend on each other and can all be in flight.
            for j in tl.static_range(STATIC_CHUNKS):
                lane_max, lane_arg, lane_sum = _accumulate_chunk(
                    x_rows, k_begin + j * BLOCK_HW + lane, k_end, c_mask, W,
                    stride_xh, stride_xw, stride_xk, lane_max, lane_arg, lane_sum,
                    HAS_MAX, HAS_AVG, STORE_ARGMAX, FLAT_HW, EVEN_HW,
                )
        else:
            for k0 in range(k_begin, k_end, BLOCK_HW):
                lane_max, lane_arg, lane_sum = _accumulate_chunk(
                    x_rows, k0 + lane, k_end, c_mask, W,
                    stride_xh, stride_xw, stride_xk, lane_max, lane_arg, lane_sum,
                    HAS_MAX, HAS_AVG, STORE_ARGMAX, FLAT_HW, EVEN_HW,
                )
        if HAS_MAX:
            s_max = tl.reduce(lane_max, 1, _nan_max)
            stripe_max = stripe_max + (s_max,)
            if STORE_ARGMAX:
                # The lowest first-position among lanes holding the maximum; for a NaN maximum,
                # among lanes holding NaN (a NaN maximum is the only case with NaN lanes).
                hit = (lane_max == s_max[:, None]) | (lane_max != lane_max)
                stripe_arg = stripe_arg + (tl.min(tl.where(hit, lane_arg, _INT32_MAX), axis=1),)
        if HAS_AVG:
            stripe_sum = stripe_sum + (tl.sum(lane_sum, axis=1),)

    out_row = b.to(tl.int64) * NUM_WINDOWS * C + c
    # Tuple indices must stay constexpr, so WIN_FIRST[i] / WIN_LAST[i] are used inline.
    for i in tl.static_range(NUM_WINDOWS):
        if HAS_MAX:
            win_max = stripe_max[WIN_LAST[i]]
            if STORE_ARGMAX:
                win_arg = stripe_arg[WIN_LAST[i]]
            for j in tl.static_range(1, WIN_LAST[i] - WIN_FIRST[i] + 1):
                s_max = stripe_max[WIN_LAST[i] - j]
                if STORE_ARGMAX:
                    # Walking up, an earlier stripe takes over on ties and when it is NaN; a NaN
                    # already held is kept against numbers (NaN >= x and x >= NaN are false).
                    take = (s_max >= win_max) | (s_max != s_max)
                    win_max = tl.where(take, s_max, win_max)
                    win_arg = tl.where(take, stripe_arg[WIN_LAST[i] - j], win_arg)
                else:
                    win_max = _nan_max(s_max, win_max)
            if STORE_ARGMAX:
                tl.store(argmax_ptr + out_row + i * C, win_arg, mask=c_mask)
        if HAS_AVG:
            win_sum = stripe_sum[WIN_FIRST[i]]
            for j in tl.static_range(WIN_FIRST[i] + 1, WIN_LAST[i] + 1):
                win_sum += stripe_sum[j]
            win_avg = tl.math.div_rn(win_sum, _window_count(i, H, W, N_PARTS, WIN_FIRST, WIN_LAST, ALIGN))
        if HAS_MAX and HAS_AVG:
            result = win_max + win_avg
        elif HAS_MAX:
            result = win_max
        else:
            result = win_avg
        tl.store(out_ptr + out_row + i * C, result.to(out_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _pyramid_pool_bwd_kernel(
    grad_out_ptr,  # [B, NUM_WINDOWS, C], any strides
    argmax_ptr,  # [B, NUM_WINDOWS, C] int32, any strides (unused unless HAS_MAX)
    grad_x_ptr,  # [B, C, H, W] with offset(h, w) == (h * W + w) * stride_xk
    C,
    H,
    W,
    stride_gb,
    stride_gw,
    stride_gc,
    stride_ab,
    stride_aw,
    stride_ac,
    stride_xb,
    stride_xc,
    stride_xk,
    N_PARTS: tl.constexpr,
    WIN_FIRST: tl.constexpr,
    WIN_LAST: tl.constexpr,
    NUM_WINDOWS: tl.constexpr,
    HAS_MAX: tl.constexpr,
    HAS_AVG: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    b = pid // num_c_blocks
    c = (pid - b * num_c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    c64 = c.to(tl.int64)
    g_row = grad_out_ptr + b.to(tl.int64) * stride_gb + c64 * stride_gc
    a_row = argmax_ptr + b.to(tl.int64) * stride_ab + c64 * stride_ac

    # Each window's gradient (already divided by its element count for the average part) and
    # argmax, read once.
    avg_grads = ()
    max_grads = ()
    positions = ()
    for i in tl.static_range(NUM_WINDOWS):
        g = tl.load(g_row + i * stride_gw, mask=c_mask, other=0.0).to(tl.float32)
        if HAS_AVG:
            count = _window_count(i, H, W, N_PARTS, WIN_FIRST, WIN_LAST, ALIGN)
            avg_grads = avg_grads + (tl.math.div_rn(g, count),)
        if HAS_MAX:
            max_grads = max_grads + (g,)
            positions = positions + (tl.load(a_row + i * stride_aw, mask=c_mask, other=-1),)

    x_rows = grad_x_ptr + b.to(tl.int64) * stride_xb + c64[:, None] * stride_xc
    lane = tl.arange(0, BLOCK_HW)
    for s in tl.static_range(N_PARTS):
        k_begin = _stripe_start(s, H, W, N_PARTS, ALIGN)
        k_end = _stripe_start(s + 1, H, W, N_PARTS, ALIGN)
        s_avg = tl.zeros([BLOCK_C], tl.float32)
        s_max = tl.zeros([BLOCK_C], tl.float32)
        s_pos = tl.full([BLOCK_C], -1, tl.int32)
        for i in tl.static_range(NUM_WINDOWS):
            if WIN_FIRST[i] <= s and s <= WIN_LAST[i]:
                if HAS_AVG:
                    s_avg += avg_grads[i]
                if HAS_MAX:
                    owned = (positions[i] >= k_begin) & (positions[i] < k_end)
                    s_max += tl.where(owned, max_grads[i], 0.0)
                    s_pos = tl.where(owned, positions[i], s_pos)
        for k0 in range(k_begin, k_end, BLOCK_HW):
            k = k0 + lane
            grad = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
            if HAS_AVG:
                grad += s_avg[:, None]
            if HAS_MAX:
                grad += tl.where(k[None, :] == s_pos[:, None], s_max[:, None], 0.0)
            tl.store(
                x_rows + k.to(tl.int64)[None, :] * stride_xk,
                grad.to(grad_x_ptr.dtype.element_ty),
                mask=c_mask[:, None] & (k < k_end)[None, :],
            )


def _parse_mode(mode: str) -> tuple[bool, bool]:
    """(has_max, has_avg) of a pooling mode of POOL_MODES."""
    if mode not in POOL_MODES:
        raise ValueError(f"pyramid_pool: mode must be one of {POOL_MODES}, got {mode!r}")
    return mode != "avg", mode != "max"


def _flat_spatial_stride(H: int, W: int, stride_h: int, stride_w: int) -> int | None:
    """The stride of k = h * W + w when offset(h, w) == k * stride for every h < H, w < W (true
    for NCHW and channels_last), else None."""
    if H == 1 or stride_h == W * stride_w:
        return stride_w
    if W == 1:
        return stride_h
    return None


def _tile_config(
    C: int,
    H: int,
    W: int,
    num_parts: int,
    itemsize: int,
    stride_c: int,
    stride_k: int | None,
) -> tuple[int, int, int, int, bool]:
    """(BLOCK_C, BLOCK_HW, ALIGN, STATIC_CHUNKS, EVEN_HW) for a [B, C, H, W] tensor with channel
    stride stride_c and flat spatial stride stride_k (None if the spatial axes do not flatten).
    STATIC_CHUNKS is the number of chunks per stripe when they are unrolled, else 0; EVEN_HW
    says every stripe is a whole number of chunks."""
    vec = 16 // itemsize  # elements per 16-byte access
    C, H, W, num_parts = int(C), int(H), int(W), int(num_parts)
    check_index_limit("pyramid_pool", "H * W", H * W)
    longest = -(-H // num_parts) * W  # elements of the longest stripe
    span = triton.next_power_of_2(longest)
    if stride_c == 1 and C > 1:
        # Each thread loads _CHANNEL_VEC channels at one position per chunk: a warp covers
        # 32 * _CHANNEL_VEC channels and the warps split the positions. A stripe too long to
        # unroll is looped over with 4 positions per thread, to keep loads in flight.
        block_c = min(triton.next_power_of_2(C), 32 * min(vec, _CHANNEL_VEC))
        block_hw = min(span, _NUM_WARPS)
        if triton.cdiv(longest, block_hw) > _MAX_STATIC_CHUNKS:
            block_hw = min(span, 4 * _NUM_WARPS)
        align = 1
    else:
        align = 1
        if stride_k == 1:
            boundaries = [s * H // num_parts * W for s in range(num_parts + 1)]
            align = vec
            while align > 1 and any(k % align for k in boundaries):
                align //= 2
        # A tile row is 32 bytes of one channel: 2 lanes of 16-byte vectors when aligned, up
        # to 8 lanes of single elements otherwise.
        block_hw = min(span, 2 * vec)
        lanes_per_row = block_hw // min(align, block_hw)
        block_c = min(
            triton.next_power_of_2(C),
            _SPATIAL_ROWS_PER_THREAD * 32 * _NUM_WARPS // lanes_per_row,
            _SPATIAL_MAX_BLOCK_C,
        )
    chunks = triton.cdiv(longest, block_hw)
    even = H % num_parts == 0 and longest % block_hw == 0
    return block_c, block_hw, align, chunks if chunks <= _MAX_STATIC_CHUNKS else 0, even


def _grid(B: int, C: int, block_c: int) -> tuple[int]:
    """One program per (b, block of channels)."""
    programs = int(B) * triton.cdiv(int(C), block_c)
    check_index_limit("pyramid_pool", "B * ceil(C / BLOCK_C) (programs)", programs)
    return (programs,)


def _window_constexprs(
    num_parts: int, window_starts: list[int], window_lengths: list[int], mode: str
) -> dict[str, object]:
    """The compile-time window table and mode shared by both kernels."""
    has_max, has_avg = _parse_mode(mode)
    return dict(
        N_PARTS=int(num_parts),
        WIN_FIRST=tuple(int(s) for s in window_starts),
        WIN_LAST=tuple(int(s) + int(n) - 1 for s, n in zip(window_starts, window_lengths)),
        NUM_WINDOWS=len(window_starts),
        HAS_MAX=has_max,
        HAS_AVG=has_avg,
    )


def forward_launch(
    x: torch.Tensor,
    out: torch.Tensor,
    argmax: torch.Tensor,
    num_parts: int,
    window_starts: list[int],
    window_lengths: list[int],
    mode: str,
    store_argmax: bool,
) -> Launch:
    """The forward launch for x [B, C, H, W] (B, C >= 1) into out and argmax [B, NW, C]."""
    B, C, H, W = x.shape
    stride_xb, stride_xc, stride_xh, stride_xw = x.stride()
    stride_xk = _flat_spatial_stride(H, W, stride_xh, stride_xw)
    block_c, block_hw, align, static_chunks, even_hw = _tile_config(
        C, H, W, num_parts, x.element_size(), stride_xc, stride_xk
    )
    return Launch(
        kernel=_pyramid_pool_fwd_kernel,
        grid=_grid(B, C, block_c),
        args=dict(
            x_ptr=x, out_ptr=out, argmax_ptr=argmax, C=C, H=H, W=W,
            stride_xb=stride_xb, stride_xc=stride_xc, stride_xh=stride_xh, stride_xw=stride_xw,
            stride_xk=0 if stride_xk is None else stride_xk,
        ),
        constexprs=dict(
            **_window_constexprs(num_parts, window_starts, window_lengths, mode),
            STORE_ARGMAX=store_argmax,
            FLAT_HW=stride_xk is not None,
            ALIGN=align,
            EVEN_HW=even_hw,
            STATIC_CHUNKS=static_chunks,
            BLOCK_C=block_c,
            BLOCK_HW=block_hw,
        ),
        num_warps=_NUM_WARPS,
    )


def backward_launch(
    grad_out: torch.Tensor,
    argmax: torch.Tensor,
    grad_x: torch.Tensor,
    num_parts: int,
    window_starts: list[int],
    window_lengths: list[int],
    mode: str,
) -> Launch:
    """The backward launch writing grad_x [B, C, H, W] (NCHW or channels_last, B, C >= 1) from
    grad_out and argmax [B, NW, C]."""
    has_max, _ = _parse_mode(mode)
    B, C, H, W = grad_x.shape
    # Both memory formats give offset(h, w) == (h * W + w) * stride(3).
    stride_xb, stride_xc, _, stride_xk = grad_x.stride()
    # The write loop only stores: it is neither unrolled nor specialised for even stripes.
    block_c, block_hw, align, _, _ = _tile_config(
        C, H, W, num_parts, grad_x.element_size(), stride_xc, stride_xk
    )
    stride_gb, stride_gw, stride_gc = grad_out.stride()
    stride_ab, stride_aw, stride_ac = argmax.stride() if has_max else (0, 0, 0)
    return Launch(
        kernel=_pyramid_pool_bwd_kernel,
        grid=_grid(B, C, block_c),
        args=dict(
            grad_out_ptr=grad_out, argmax_ptr=argmax, grad_x_ptr=grad_x, C=C, H=H, W=W,
            stride_gb=stride_gb, stride_gw=stride_gw, stride_gc=stride_gc,
            stride_ab=stride_ab, stride_aw=stride_aw, stride_ac=stride_ac,
            stride_xb=stride_xb, stride_xc=stride_xc, stride_xk=stride_xk,
        ),
        constexprs=dict(
            **_window_constexprs(num_parts, window_starts, window_lengths, mode),
            ALIGN=align,
            BLOCK_C=block_c,
            BLOCK_HW=block_hw,
        ),
        num_warps=_NUM_WARPS,
    )


def pyramid_pool_forward(
    x: torch.Tensor,
    num_parts: int,
    window_starts: list[int],
    window_lengths: list[int],
    mode: str,
    return_argmax: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool x [B, C, H, W] (any strides; float32, float16 or bfloat16) over stripe windows.

    Returns out [B, NW, C] contiguous in x's dtype and argmax [B, NW, C] contiguous int32 (flat
    h * W + w of each window's first maximum) when return_argmax and mode pools the maximum, else
    an empty int32 tensor.
    """
    has_max, _ = _parse_mode(mode)
    B, C, _, _ = x.shape
    num_windows = len(window_starts)
    out = torch.empty((B, num_windows, C), dtype=x.dtype, device=x.device)
    store_argmax = return_argmax and has_max
    argmax = torch.empty(
        (B, num_windows, C) if store_argmax else (0,), dtype=torch.int32, device=x.device
    )
    if B > 0 and C > 0:
        run_launch(forward_launch(x, out, argmax, num_parts, window_starts, window_lengths, mode, store_argmax))
    return out, argmax


def pyramid_pool_backward(
    grad_out: torch.Tensor,
    argmax: torch.Tensor,
    num_parts: int,
    window_starts: list[int],
    window_lengths: list[int],
    mode: str,
    height: int,
    width: int,
    channels_last: bool,
) -> torch.Tensor:
    """Gradient of pyramid_pool_forward with respect to x.

    grad_out is [B, NW, C] (any strides; float32, float16 or bfloat16); argmax is the forward's
    int32 [B, NW, C] (any strides), ignored unless mode pools the maximum. Returns grad_x
    [B, C, height, width] in grad_out's dtype, channels_last if channels_last else contiguous.
    """
    B, _, C = grad_out.shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    grad_x = torch.empty(
        (B, C, height, width),
        dtype=grad_out.dtype,
        device=grad_out.device,
        memory_format=memory_format,
    )
    if B > 0 and C > 0:
        run_launch(backward_launch(grad_out, argmax, grad_x, num_parts, window_starts, window_lengths, mode))
    return grad_x

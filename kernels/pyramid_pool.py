"""Triton kernels of pyramid_pool: max and/or average pooling over windows of horizontal stripes.

Geometry. x is [B, C, H, W]. Stripe s of n covers rows [floor(s*H/n), floor((s+1)*H/n)); window i
covers stripes [window_starts[i], window_starts[i] + window_lengths[i]). Windows may overlap and
repeat. The output is [B, NW, C]; the argmax (flat h * W + w of the first maximum in row-major
order, NaN counting as the largest value) is int32 [B, NW, C].

Design. One program owns (b, a block of BLOCK_C channels) and every stripe of that block, so no
statistic ever leaves registers and no scratch buffer or second pass is needed:

* forward: the program walks the stripes top to bottom, reading each as 2-D tiles
  [BLOCK_C, BLOCK_HW] (the spatial axis flattened to k = h * W + w, chunked by BLOCK_HW), and
  reduces each stripe to its float32 maximum, first argmax and float32 sum. The stripe results are
  kept as [BLOCK_C, BLOCK_N] register tiles (column s = stripe s, BLOCK_N = next power of two of
  n); each window is then a masked reduction over the columns of its stripes. x is read exactly
  once and out (and argmax) written once.
* backward: the program reads grad_out (and argmax) once per window and folds them into per-stripe
  tiles [BLOCK_C, BLOCK_N]: ag = sum of g / count over windows containing the stripe, mg = sum of g
  over windows whose maximum lies in the stripe, spos = that maximum's position (all such windows
  share it: a window's argmax is the argmax of one of its stripes). It then writes every element of
  its stripes exactly once as ag + (mg where k == spos), without atomics, so it is deterministic.

The window table and n are tl.constexpr (a tuple each), not a device tensor: a device table would
need a host-to-device copy on every call, which CUDA-graph capture cannot record from pageable
memory, and the table is fixed for a model, so the one recompilation per distinct table is paid
once. The window loop is unrolled (tl.static_range).

Maxima use their own reduction (_first_max_combine) because tl.max ignores NaN on the GPU and its
tie-breaking is not part of its contract; reducing (value, flat index) pairs with "NaN is largest,
lower index wins ties" makes the result independent of the reduction tree's shape.

Limits. H * W must fit in int32 (the argmax is int32). Pointer offsets are int64, so x itself may
exceed 2**31 elements. Arguments (window table, num_parts in [1, H], W >= 1, shapes of grad_out and
argmax) are validated by the caller, not here. Block sizes depend on C, H, W and n, so a dynamic C,
H or W under torch.compile specialises (guards) on them; B stays symbolic.
"""

import torch
import triton
import triton.language as tl

# Elements of one [BLOCK_C, BLOCK_HW] tile: 2048 float32 values over 4 warps keep the value, index
# and mask tiles of the forward reduction in registers with room for several programs per SM.
_TILE_ELEMS = 2048
# Elements of each [BLOCK_C, BLOCK_N] per-stripe statistics tile (three are live at once).
_STATS_ELEMS = 2048
# Channel block bounds: at least 16 so channels_last rows are read in >= 64-byte runs, at most 64 so
# a [64, 2048, 24, 8] input still gives thousands of programs (no tail-wave imbalance).
_MIN_BLOCK_C = 16
_MAX_BLOCK_C = 64
_NUM_WARPS = 4
_INT32_MAX = tl.constexpr(2**31 - 1)


@triton.jit
def _first_max_combine(value_a, index_a, value_b, index_b):
    """Combine two (value, flat index) candidates of a maximum: NaN beats every number, and of two
    equal values (or two NaNs) the lower index wins. Elementwise; usable by tl.reduce."""
    nan_a = value_a != value_a
    nan_b = value_b != value_b
    equal = (value_a == value_b) | (nan_a & nan_b)
    take_a = (value_a > value_b) | (nan_a & ~nan_b) | (equal & (index_a < index_b))
    return tl.where(take_a, value_a, value_b), tl.where(take_a, index_a, index_b)


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
    WIN_STARTS: tl.constexpr,  # tuple of NUM_WINDOWS first stripes
    WIN_LENGTHS: tl.constexpr,  # tuple of NUM_WINDOWS stripe counts
    NUM_WINDOWS: tl.constexpr,
    HAS_MAX: tl.constexpr,
    HAS_AVG: tl.constexpr,
    STORE_ARGMAX: tl.constexpr,
    FLAT_HW: tl.constexpr,  # offset(h, w) == k * stride_xk: no division by W per element
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_N: tl.constexpr,  # >= N_PARTS
):
    pid = tl.program_id(0)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    b = pid // num_c_blocks
    c = (pid - b * num_c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    x_rows = x_ptr + b.to(tl.int64) * stride_xb + c.to(tl.int64)[:, None] * stride_xc
    lane = tl.arange(0, BLOCK_HW)
    col = tl.arange(0, BLOCK_N)[None, :]

    stripe_max = tl.full([BLOCK_C, BLOCK_N], float("-inf"), tl.float32)
    stripe_arg = tl.full([BLOCK_C, BLOCK_N], _INT32_MAX, tl.int32)
    stripe_sum = tl.zeros([BLOCK_C, BLOCK_N], tl.float32)
    for s in range(N_PARTS):
        k_begin = (s * H // N_PARTS) * W
        k_end = ((s + 1) * H // N_PARTS) * W
        run_max = tl.full([BLOCK_C], float("-inf"), tl.float32)
        run_arg = tl.full([BLOCK_C], _INT32_MAX, tl.int32)
        run_sum = tl.zeros([BLOCK_C], tl.float32)
        for k0 in range(k_begin, k_end, BLOCK_HW):
            k = k0 + lane
            k_mask = k < k_end
            if FLAT_HW:
                k_off = k.to(tl.int64) * stride_xk
            else:
                h = k // W
                k_off = h.to(tl.int64) * stride_xh + (k - h * W).to(tl.int64) * stride_xw
            mask = c_mask[:, None] & k_mask[None, :]
            v = tl.load(x_rows + k_off[None, :], mask=mask, other=0.0).to(tl.float32)
            if HAS_MAX:
                # Padding gets -inf and the largest index, so any real element beats it.
                v_max = tl.where(mask, v, float("-inf"))
                idx = tl.where(mask, k[None, :], _INT32_MAX)
                tile_max, tile_arg = tl.reduce((v_max, idx), 1, _first_max_combine)
                # Earlier chunks hold lower indices, so the combine keeps their ties.
                run_max, run_arg = _first_max_combine(run_max, run_arg, tile_max, tile_arg)
            if HAS_AVG:
                run_sum += tl.sum(v, axis=1)
        in_stripe = col == s
        stripe_max = tl.where(in_stripe, run_max[:, None], stripe_max)
        stripe_arg = tl.where(in_stripe, run_arg[:, None], stripe_arg)
        stripe_sum = tl.where(in_stripe, run_sum[:, None], stripe_sum)

    out_row = b.to(tl.int64) * NUM_WINDOWS * C + c
    for i in tl.static_range(NUM_WINDOWS):
        first = WIN_STARTS[i]
        last = first + WIN_LENGTHS[i]
        in_window = (col >= first) & (col < last)
        if HAS_MAX:
            # Stripe argmaxes grow with the stripe, so the lowest index is the first stripe.
            win_max, win_arg = tl.reduce(
                (
                    tl.where(in_window, stripe_max, float("-inf")),
                    tl.where(in_window, stripe_arg, _INT32_MAX),
                ),
                1,
                _first_max_combine,
            )
            if STORE_ARGMAX:
                tl.store(argmax_ptr + out_row + i * C, win_arg, mask=c_mask)
        if HAS_AVG:
            count = ((last * H // N_PARTS) - (first * H // N_PARTS)) * W
            win_avg = tl.sum(tl.where(in_window, stripe_sum, 0.0), axis=1) / count.to(tl.float32)
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
    WIN_STARTS: tl.constexpr,
    WIN_LENGTHS: tl.constexpr,
    NUM_WINDOWS: tl.constexpr,
    HAS_MAX: tl.constexpr,
    HAS_AVG: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    b = pid // num_c_blocks
    c = (pid - b * num_c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    c64 = c.to(tl.int64)
    g_row = grad_out_ptr + b.to(tl.int64) * stride_gb + c64 * stride_gc
    a_row = argmax_ptr + b.to(tl.int64) * stride_ab + c64 * stride_ac
    col = tl.arange(0, BLOCK_N)[None, :]

    avg_grad = tl.zeros([BLOCK_C, BLOCK_N], tl.float32)
    max_grad = tl.zeros([BLOCK_C, BLOCK_N], tl.float32)
    max_pos = tl.full([BLOCK_C, BLOCK_N], -1, tl.int32)
    for i in tl.static_range(NUM_WINDOWS):
        first = WIN_STARTS[i]
        last = first + WIN_LENGTHS[i]
        g = tl.load(g_row + i * stride_gw, mask=c_mask, other=0.0).to(tl.float32)
        if HAS_AVG:
            count = ((last * H // N_PARTS) - (first * H // N_PARTS)) * W
            in_window = (col >= first) & (col < last)
            avg_grad += tl.where(in_window, (g / count.to(tl.float32))[:, None], 0.0)
        if HAS_MAX:
            pos = tl.load(a_row + i * stride_aw, mask=c_mask, other=0)
            # The stripe holding row r is the largest s with floor(s*H/n) <= r.
            owner = col == (((pos // W + 1) * N_PARTS - 1) // H)[:, None]
            max_grad += tl.where(owner, g[:, None], 0.0)
            max_pos = tl.where(owner, pos[:, None], max_pos)

    x_rows = grad_x_ptr + b.to(tl.int64) * stride_xb + c64[:, None] * stride_xc
    lane = tl.arange(0, BLOCK_HW)
    for s in range(N_PARTS):
        # Pull column s out of the statistics tiles (one nonzero term per row: exact).
        in_stripe = col == s
        s_avg = tl.sum(tl.where(in_stripe, avg_grad, 0.0), axis=1)
        s_max = tl.sum(tl.where(in_stripe, max_grad, 0.0), axis=1)
        s_pos = tl.max(tl.where(in_stripe, max_pos, -1), axis=1)
        k_begin = (s * H // N_PARTS) * W
        k_end = ((s + 1) * H // N_PARTS) * W
        for k0 in range(k_begin, k_end, BLOCK_HW):
            k = k0 + lane
            mask = c_mask[:, None] & (k < k_end)[None, :]
            grad = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
            if HAS_AVG:
                grad += s_avg[:, None]
            if HAS_MAX:
                grad += tl.where(k[None, :] == s_pos[:, None], s_max[:, None], 0.0)
            tl.store(
                x_rows + k.to(tl.int64)[None, :] * stride_xk,
                grad.to(grad_x_ptr.dtype.element_ty),
                mask=mask,
            )


def _parse_mode(mode: str) -> tuple[bool, bool]:
    """(has_max, has_avg) of a pooling mode."""
    modes = {"max": (True, False), "avg": (False, True), "max+avg": (True, True)}
    if mode not in modes:
        raise ValueError(f"pyramid_pool: mode must be 'max', 'avg' or 'max+avg', got {mode!r}")
    return modes[mode]


def _next_pow2(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()


def _block_sizes(C: int, H: int, W: int, num_parts: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_HW, BLOCK_N) for C channels and stripes of at most ceil(H/n) rows of W."""
    block_n = _next_pow2(num_parts)
    block_hw = min(_next_pow2(-(-H // num_parts) * W), _TILE_ELEMS // _MIN_BLOCK_C)
    block_c = min(_MAX_BLOCK_C, _TILE_ELEMS // block_hw, max(1, _STATS_ELEMS // block_n))
    block_c = max(min(block_c, _next_pow2(C)), 1)
    return block_c, block_hw, block_n


def _flat_spatial_stride(H: int, W: int, stride_h: int, stride_w: int) -> int | None:
    """The stride of k = h * W + w when offset(h, w) == k * stride for every h < H, w < W (true
    for NCHW and channels_last), else None."""
    if H == 1 or stride_h == W * stride_w:
        return stride_w
    if W == 1:
        return stride_h
    return None


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
    has_max, has_avg = _parse_mode(mode)
    B, C, H, W = x.shape
    num_windows = len(window_starts)
    out = torch.empty((B, num_windows, C), dtype=x.dtype, device=x.device)
    store_argmax = return_argmax and has_max
    argmax = torch.empty(
        (B, num_windows, C) if store_argmax else (0,), dtype=torch.int32, device=x.device
    )
    if B == 0 or C == 0:
        return out, argmax

    block_c, block_hw, block_n = _block_sizes(C, H, W, num_parts)
    stride_xb, stride_xc, stride_xh, stride_xw = x.stride()
    stride_xk = _flat_spatial_stride(H, W, stride_xh, stride_xw)
    grid = (B * triton.cdiv(C, block_c),)
    torch.library.wrap_triton(_pyramid_pool_fwd_kernel)[grid](
        x,
        out,
        argmax,
        C,
        H,
        W,
        stride_xb,
        stride_xc,
        stride_xh,
        stride_xw,
        0 if stride_xk is None else stride_xk,
        N_PARTS=int(num_parts),
        WIN_STARTS=tuple(int(s) for s in window_starts),
        WIN_LENGTHS=tuple(int(n) for n in window_lengths),
        NUM_WINDOWS=num_windows,
        HAS_MAX=has_max,
        HAS_AVG=has_avg,
        STORE_ARGMAX=store_argmax,
        FLAT_HW=stride_xk is not None,
        BLOCK_C=block_c,
        BLOCK_HW=block_hw,
        BLOCK_N=block_n,
        num_warps=_NUM_WARPS,
    )
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
    has_max, has_avg = _parse_mode(mode)
    B, num_windows, C = grad_out.shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    grad_x = torch.empty(
        (B, C, height, width),
        dtype=grad_out.dtype,
        device=grad_out.device,
        memory_format=memory_format,
    )
    if B == 0 or C == 0:
        return grad_x

    block_c, block_hw, block_n = _block_sizes(C, height, width, num_parts)
    # Both memory formats give offset(h, w) == (h * width + w) * stride(3).
    stride_xb, stride_xc, _, stride_xk = grad_x.stride()
    stride_ab, stride_aw, stride_ac = argmax.stride() if has_max else (0, 0, 0)
    grid = (B * triton.cdiv(C, block_c),)
    torch.library.wrap_triton(_pyramid_pool_bwd_kernel)[grid](
        grad_out,
        argmax,
        grad_x,
        C,
        height,
        width,
        *grad_out.stride(),
        stride_ab,
        stride_aw,
        stride_ac,
        stride_xb,
        stride_xc,
        stride_xk,
        N_PARTS=int(num_parts),
        WIN_STARTS=tuple(int(s) for s in window_starts),
        WIN_LENGTHS=tuple(int(n) for n in window_lengths),
        NUM_WINDOWS=num_windows,
        HAS_MAX=has_max,
        HAS_AVG=has_avg,
        BLOCK_C=block_c,
        BLOCK_HW=block_hw,
        BLOCK_N=block_n,
        num_warps=_NUM_WARPS,
    )
    return grad_x

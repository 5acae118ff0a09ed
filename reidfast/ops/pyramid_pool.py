"""Stripe/pyramid pooling of part-based Re-ID heads: GMP and/or GAP over windows of stripes.

A feature map x [B, C, H, W] is cut along H into n basic stripes; stripe i covers rows
[floor(i*H/n), floor((i+1)*H/n)) (a partition of H, equal stripes when n divides H; adaptive
pooling's overlapping boundaries are not used). A window (start, length) covers stripes
start .. start+length-1. For each window the op gives, per channel,

    GMP(window) = max over the window's rows and all W columns,
    GAP(window) = mean over the same elements,

and pooling "max+avg" is their sum: the branch op of the Pyramid paper (Fig. 3). One call covers the
poolings of the part-based methods: the 21-window pyramid of n = 6 (`pyramid_windows(6)`), MGN's
global + 2 + 3 stripes, PCB's 6 stripes, PLR-OSNet's 4 averaged stripes.

Numerics and ties. Sums accumulate in float32 (float64 for float64 input) and the result is rounded
to the input dtype once. The maximum propagates NaN (a NaN is larger than any number). Backward sends
the average's gradient evenly over the window and the maximum's gradient to the window's maximum,
the first one in row-major (h, w) order on ties, as torch.max(dim) does; every element of grad_x is
written once, without atomics, so backward is deterministic on every backend.

Export. Under torch.export (and so torch.onnx.export(dynamo=True)) the op is traced as its stripe
decomposition in standard operators (Slice, ReduceMax, ReduceSum, Max, Add, Concat), so an exported
model does not need reidfast to run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reidfast import _extension
from reidfast._checks import check_int
from reidfast.ops._autograd import double_backward_error, refuse_double_backward
from reidfast.ops.distance import accumulation_dtype
from reidfast.backend import OpBackends, triton_installed

from reidfast.ops.enums import POOL_MODES
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Limits of the fused kernels (reidfast.backend's policy applies beyond).
_MAX_PLANE = 2**31 - 1
_MAX_CUDA_STRIPES = 64
_MAX_CUDA_WINDOWS = 512


def pyramid_windows(num_parts: int, levels: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """The windows of the stripe pyramid, as (start, length) pairs in stripe units.

    Level l (1 <= l <= num_parts) holds the num_parts - l + 1 windows of l adjacent stripes, at a
    stride of one stripe; the whole pyramid has num_parts * (num_parts + 1) / 2 windows, ordered fine
    to coarse and left to right: (0,1), (1,1), ..., (0,2), ..., (0,num_parts).

    Args:
        num_parts: number of basic stripes n (>= 1).
        levels: which levels to keep, in the order given (e.g. (1, 2, 5, 6) for the paper's
            "Pyramid-110011"); None keeps all of 1..n.
    """
    check_int("num_parts", num_parts, minimum=1)
    if levels is None:
        levels = range(1, num_parts + 1)
    else:
        levels = list(levels)
        if not levels:
            raise ValueError("levels must name at least one pyramid level, got an empty sequence")
        for level in levels:
            if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= num_parts:
                raise ValueError(f"levels must be integers in [1, num_parts={num_parts}], got {level!r}")
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels must not repeat a level, got {tuple(levels)}")
    return [(start, level) for level in levels for start in range(num_parts - level + 1)]


def pyramid_pool(
    x: torch.Tensor,
    num_parts: int = 6,
    windows: Sequence[tuple[int, int]] | None = None,
    pool: str = "max+avg",
    backend: str | None = None,
) -> torch.Tensor:
    """Pools each window of horizontal stripes of `x` (GMP, GAP or GMP + GAP).

    Args:
        x (Tensor[B, C, H, W]): feature map, float32, float16 or bfloat16 (float64 on the
            'reference' and 'cpu' backends), any strides (channels_last included).
        num_parts: number of basic stripes n, 1 <= n <= H.
        windows: (start, length) pairs in stripe units, 0 <= start, 1 <= length,
            start + length <= n; None is the whole pyramid, `pyramid_windows(num_parts)`.
        pool: "max" (GMP), "avg" (GAP) or "max+avg" (their sum).
        backend: "reference", "cpu", "cuda" or "triton"; None picks (see reidfast.backend).

    Returns:
        Tensor[B, len(windows), C] in x's dtype: out[b, i, c] = GMP + GAP of window i of plane
        (b, c), as `pool` says.
    """
    starts, lengths = _check_args(x, num_parts, windows, pool)
    if torch.compiler.is_exporting():
        return pyramid_pool_from_stripes(x, num_parts, list(zip(starts, lengths)), pool)
    name = _KERNELS.choose(backend, x, lambda name: _limit(name, x, num_parts, len(starts)))
    if name == "reference":
        return pyramid_pool_reference(x, num_parts, list(zip(starts, lengths)), pool)
    return_argmax = "max" in pool and torch.is_grad_enabled() and x.requires_grad
    out, _ = _KERNELS.kernels[name](x, num_parts, starts, lengths, pool, return_argmax)
    return out


def _limit(name: str, x: torch.Tensor, num_parts: int, num_windows: int) -> str | None:
    """Why fused backend `name` cannot pool x into num_parts stripes and num_windows windows
    (reidfast.backend's limit policy)."""
    plane = x.shape[2] * x.shape[3]
    if plane > _MAX_PLANE:
        # The window maxima's positions h * W + w are int32 (the argmax of the backward).
        return f"H * W must be at most {_MAX_PLANE} (int32 positions), got {x.shape[2]} * {x.shape[3]} = {plane}"
    if name == "cuda" and num_parts > _MAX_CUDA_STRIPES:
        # The CUDA kernel keeps a block's stripe partials in shared memory.
        return f"num_parts must be at most {_MAX_CUDA_STRIPES} on the CUDA kernel, got {num_parts}"
    if name == "cuda" and num_windows > _MAX_CUDA_WINDOWS:
        return f"windows must number at most {_MAX_CUDA_WINDOWS} on the CUDA kernel, got {num_windows}"
    return None


def pyramid_pool_reference(
    x: torch.Tensor,
    num_parts: int = 6,
    windows: Sequence[tuple[int, int]] | None = None,
    pool: str = "max+avg",
) -> torch.Tensor:
    """The specification of `pyramid_pool`, in plain PyTorch, one window at a time.

    Same arguments and result as `pyramid_pool`; differentiable through PyTorch's autograd
    (torch.max(dim) sends the gradient to the first maximum, as the fused kernels do).
    """
    starts, lengths = _check_args(x, num_parts, windows, pool)
    out, _ = reference_forward(x, num_parts, starts, lengths, pool)
    return out


def reference_forward(
    x: torch.Tensor, num_parts: int, starts: Sequence[int], lengths: Sequence[int], pool: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference pooled values [B, NW, C] and window argmax [B, NW, C] (int32, h * W + w)."""
    _, _, height, width = x.shape
    acc_dtype = accumulation_dtype(x.dtype)
    pooled, argmax = [], []
    for start, length in zip(starts, lengths):
        row_begin = _stripe_begin(start, height, num_parts)
        row_end = _stripe_begin(start + length, height, num_parts)
        window = x[:, :, row_begin:row_end, :].flatten(2)  # [B, C, rows * W]
        maximum, index = window.max(dim=2)  # [B, C]: first maximum on ties, NaN propagates
        value = torch.zeros_like(maximum, dtype=acc_dtype)
        if "max" in pool:
            value = value + maximum.to(acc_dtype)
        if "avg" in pool:
            value = value + window.to(acc_dtype).mean(dim=2)
        pooled.append(value.to(x.dtype))
        argmax.append((index + row_begin * width).to(torch.int32))
    return torch.stack(pooled, dim=1), torch.stack(argmax, dim=1)


def pyramid_pool_from_stripes(
    x: torch.Tensor,
    num_parts: int = 6,
    windows: Sequence[tuple[int, int]] | None = None,
    pool: str = "max+avg",
) -> torch.Tensor:
    """`pyramid_pool` from per-stripe statistics, in standard operators only.

    Each stripe is reduced once (amax and float32 sum), then each window combines its stripes.
    This is the best plain-PyTorch formulation (the baseline the fused kernels are measured
    against) and the form the op takes in exported models. Its values equal the op's; its
    gradient is PyTorch's for amax, which splits the gradient evenly among tied maxima.
    """
    starts, lengths = _check_args(x, num_parts, windows, pool)
    height, width = x.shape[2], x.shape[3]
    acc_dtype = accumulation_dtype(x.dtype)
    bounds = [_stripe_begin(s, height, num_parts) for s in range(num_parts + 1)]
    stripes = [x[:, :, bounds[s] : bounds[s + 1], :] for s in range(num_parts)]  # n x [B, C, rows, W]
    stripe_max = [stripe.amax(dim=(2, 3)) for stripe in stripes] if "max" in pool else []
    stripe_sum = [stripe.sum(dim=(2, 3), dtype=acc_dtype) for stripe in stripes] if "avg" in pool else []
    pooled = []
    for start, length in zip(starts, lengths):
        last = start + length
        value = None
        if "max" in pool:
            value = torch.stack(stripe_max[start:last]).amax(dim=0).to(acc_dtype)
        if "avg" in pool:
            mean = torch.stack(stripe_sum[start:last]).sum(dim=0) / ((bounds[last] - bounds[start]) * width)
            value = mean if value is None else value + mean
        pooled.append(value.to(x.dtype))
    return torch.stack(pooled, dim=1)


def _stripe_begin(stripe: int, height: int, num_parts: int) -> int:
    """First row of `stripe` (stripe == num_parts gives H)."""
    return stripe * height // num_parts


def _check_args(x, num_parts, windows, pool) -> tuple[list[int], list[int]]:
    """Validates the arguments of pyramid_pool; returns the windows as (starts, lengths)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a Tensor [B, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [B, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.shape[3] == 0:
        raise ValueError(f"x must have W >= 1 (a window of no columns has no mean), got shape {tuple(x.shape)}")
    check_int("num_parts", num_parts, minimum=1)
    height = x.shape[2]
    if num_parts > height:
        raise ValueError(f"num_parts must be at most H={height} (one row per stripe), got {num_parts}")
    if pool not in POOL_MODES:
        raise ValueError(f"pool must be one of {POOL_MODES}, got {pool!r}")
    if windows is None:
        windows = pyramid_windows(num_parts)
    if isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence) or len(windows) == 0:
        raise ValueError(f"windows must be a non-empty sequence of (start, length) pairs, got {windows!r}")
    starts, lengths = [], []
    for window in windows:
        if not (isinstance(window, Sequence) and len(window) == 2) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in window
        ):
            raise ValueError(f"windows must hold (start, length) pairs of ints, got {window!r}")
        start, length = window
        if length < 1 or start < 0 or start + length > num_parts:
            raise ValueError(
                f"window {tuple(window)} is empty or outside the {num_parts} stripes "
                f"(need start >= 0, length >= 1, start + length <= num_parts)"
            )
        starts.append(start)
        lengths.append(length)
    return starts, lengths


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _register(forward_op, backward_op) -> None:
    """Fake kernels and autograd for one (forward, backward) pair of registered ops."""

    @torch.library.register_fake(forward_op)
    def _(x, num_parts, window_starts, window_lengths, mode, return_argmax):
        batch, channels = x.shape[0], x.shape[1]
        out = x.new_empty(batch, len(window_starts), channels)
        if return_argmax and "max" in mode:
            return out, x.new_empty(batch, len(window_starts), channels, dtype=torch.int32)
        return out, x.new_empty(0, dtype=torch.int32)

    @torch.library.register_fake(backward_op)
    def _(grad_out, argmax, num_parts, window_starts, window_lengths, mode, height, width, channels_last):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        shape = (grad_out.shape[0], grad_out.shape[2], height, width)
        return torch.empty(shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=memory_format)

    def setup_context(ctx, inputs, output):
        x, num_parts, window_starts, window_lengths, mode, return_argmax = inputs
        # The argmax output is an integer tensor: without this, autograd would build a zero
        # gradient the size of the output for it on every backward.
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        if "max" in mode and not return_argmax:
            ctx.missing_argmax = True
            return
        ctx.missing_argmax = False
        ctx.geometry = (num_parts, window_starts, window_lengths, mode, x.shape[2], x.shape[3], _is_channels_last(x))
        ctx.save_for_backward(output[1])

    def backward(ctx, grad_out, _grad_argmax):
        if ctx.missing_argmax:
            raise RuntimeError(
                "pyramid_pool: the forward ran with return_argmax=False, so the maximum's gradient "
                "cannot be routed; call the op with return_argmax=True when x needs a gradient"
            )
        if grad_out is None:
            return None, None, None, None, None, None
        refuse_double_backward("pyramid_pool")
        (argmax,) = ctx.saved_tensors
        num_parts, starts, lengths, mode, height, width, channels_last = ctx.geometry
        grad_x = backward_op(grad_out, argmax, num_parts, starts, lengths, mode, height, width, channels_last)
        return grad_x, None, None, None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)

    def differentiate_backward(ctx, *grads):
        raise double_backward_error("pyramid_pool")

    torch.library.register_autograd(backward_op, differentiate_backward)


_KERNELS = OpBackends("pyramid_pool")

if _extension.LOAD_ERROR is None:
    _register(torch.ops.reidfast.pyramid_pool_forward.default, torch.ops.reidfast.pyramid_pool_backward.default)
    _KERNELS.add("cpu", torch.ops.reidfast.pyramid_pool_forward.default)
    if _extension.has_kernel("pyramid_pool_forward", "CUDA"):
        _KERNELS.add("cuda", torch.ops.reidfast.pyramid_pool_forward.default)

if triton_installed():
    from reidfast.kernels import pyramid_pool as _triton_kernels

    _TRITON_FORWARD = _KERNELS.add_triton("pyramid_pool_forward_triton", _triton_kernels.pyramid_pool_forward)
    _register(_TRITON_FORWARD, _KERNELS.add_triton("pyramid_pool_backward_triton", _triton_kernels.pyramid_pool_backward))
    _KERNELS.add("triton", _TRITON_FORWARD)

"""The distance convention of every pairwise op, defined once for the Python side.

Euclidean distances in GEMM form, the convention of every public Re-ID codebase (and, unlike
torch.cdist, exportable to ONNX):

    d(a, b)^2 = clamp(|a|^2 + |b|^2 - 2 a.b, min=DISTANCE_EPS),     d(a, b) = sqrt(d(a, b)^2),

computed in the accumulation dtype: float32 for float32, float16 and bfloat16 inputs, float64 for
float64. The clamp keeps NaN (torch.clamp propagates it), so a NaN embedding gives NaN distances.
The C++ and CUDA kernels take the same epsilon from csrc/distance.h, the Triton kernels from
kernels/_distance.py.
"""

from __future__ import annotations

import torch

from reidfast._checks import check_float_dtype, check_same_as, check_tensor

# Smallest squared distance; its square root, 1e-6, is the smallest distance.
DISTANCE_EPS = 1e-12


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every op accumulates in for inputs of `dtype`: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pairwise_distance(x: torch.Tensor, y: torch.Tensor | None = None, squared: bool = False) -> torch.Tensor:
    """Euclidean distances between the rows of x and of y, in GEMM form.

    There is no fused kernel to choose: the device's matrix multiply already is the fused form.

    Args:
        x (Tensor[N, D]), y (Tensor[M, D] or None, meaning x): float32, float16, bfloat16 or
            float64, one dtype and device.
        squared: return the clamped squared distance instead of its square root.

    Returns:
        Tensor[N, M] in x's dtype: sqrt(clamp(|x_i|^2 + |y_j|^2 - 2 x_i.y_j, min=1e-12)), computed
        in the accumulation dtype.
    """
    check_tensor("x", x, 2, "[N, D]")
    check_float_dtype("x", x)
    if y is not None:
        check_tensor("y", y, 2, "[M, D]")
        check_same_as("y", y, "x", x)
    return distance_matrix(x, x if y is None else y, squared).to(x.dtype)


def distance_matrix(
    x: torch.Tensor, y: torch.Tensor, squared: bool, y_squared_norms: torch.Tensor | None = None
) -> torch.Tensor:
    """[N, M] distances of the rows of x [N, D] and y [M, D] in the accumulation dtype, unchecked.

    y_squared_norms (Tensor[M] or None): |y_j|^2 as `y.pow(2).sum(1)` in the accumulation dtype
    gives it, when the caller already has it (one gallery against many query chunks).
    """
    acc = accumulation_dtype(x.dtype)
    x, y = x.to(acc), y.to(acc)
    if y_squared_norms is None:
        y_squared_norms = y.pow(2).sum(1)
    squares = x.pow(2).sum(1)[:, None] + y_squared_norms[None, :] - 2.0 * (x @ y.t())  # [N, M]
    squares = squares.clamp(min=DISTANCE_EPS)
    return squares if squared else squares.sqrt()

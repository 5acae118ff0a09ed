"""The adaptive-margin pairwise loss (arXiv:1707.00409, Eq. 5-9; docs/methods.md section 4).

Over the unordered pairs i < j of a batch x [N, D] with identity labels, with D_ij the squared
Euclidean distance in the package's convention, max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 1e-12):

    s  = mean of D_ij over positive pairs (same label),   d = mean over negative pairs,
    Mp = (1 / mu) (1 - exp(-mu d))                  (the up-margin of positive pairs, Eq. 5)
    Mn = (1 / gamma) log(1 + exp(gamma s))          (the down-margin of negative pairs, Eq. 5)
    L  = sum over positive pairs of max(D_ij - Mp, 0) + sum over negative pairs of max(Mn - D_ij, 0)

s and d, and so the margins, are constants for the gradient (the paper's Eq. 13-14). Reductions:
"sum" (the paper), "mean" over all N (N - 1) / 2 pairs, "balanced" (mean over the positive pairs'
terms + mean over the negative pairs' terms). Mn is computed as softplus(gamma s) / gamma and Mp
with expm1, so neither overflows nor loses precision for large or small arguments.

The fused backends visit the distance matrix in tiles, twice: first the positive and negative
sums and counts, then the hinge terms; the gradient 2 (diag(W 1) - W) x, with W the symmetric
matrix of the pairs' hinge slopes, is accumulated in the second pass when x requires a gradient,
so backward is a scaling. The N x N matrix is never materialised beyond one tile.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from reidfast import _extension
from reidfast.backend import OpBackends, triton_installed
from reidfast._checks import check_float, check_float_dtype, check_labels, check_tensor
from reidfast.ops._autograd import refuse_double_backward
from reidfast.ops.distance import accumulation_dtype, distance_matrix

from reidfast.ops.enums import REDUCTIONS


class AdaptiveMargins(NamedTuple):
    """The margins of one batch and the means they come from (0-d float tensors, detached).

    mp: the up-margin Mp of positive pairs; mn: the down-margin Mn of negative pairs;
    s: the mean squared distance of positive pairs; d: that of negative pairs.
    """

    mp: torch.Tensor
    mn: torch.Tensor
    s: torch.Tensor
    d: torch.Tensor


def adaptive_margin_loss(
    x: torch.Tensor,
    labels: torch.Tensor,
    mu: float = 8.0,
    gamma: float = 2.1,
    reduction: str = "mean",
    return_margins: bool = False,
    backend: str | None = None,
):
    """The adaptive-margin loss of a batch (see the module docstring for the equations).

    Args:
        x (Tensor[N, D]): embeddings; float32, float16 or bfloat16 (float64 on the 'reference'
            and 'cpu' backends).
        labels (Tensor[N]): identities, any integer dtype and values. The batch needs at least
            one positive and one negative pair.
        mu, gamma: the margins' parameters (> 0); the paper's best on PRID2011 are 8 and 2.1.
        reduction: "mean" over all pairs, "sum" (the paper) or "balanced".
        return_margins: also return the batch's AdaptiveMargins (mp, mn, s, d), for logging.
        backend: "reference", "cpu", "cuda" or "triton"; None picks (see reidfast.backend).

    Returns:
        The loss, a 0-d tensor in x's dtype (computed in float32, float64 for float64 x), and with
        return_margins=True a tuple (loss, AdaptiveMargins).
    """
    _check_args(x, labels, mu, gamma, reduction, return_margins)
    labels = labels.long()
    if not torch.compiler.is_compiling():
        _check_pairs(labels)
    name = _KERNELS.choose(backend, x)
    if name == "reference":
        loss, margins = _reference_loss(x, labels, float(mu), float(gamma), reduction)
    else:
        compute_grad = torch.is_grad_enabled() and x.requires_grad
        loss, margin_values, _ = _KERNELS.kernels[name](x, labels, float(mu), float(gamma), reduction, compute_grad)
        margins = AdaptiveMargins(*margin_values.unbind()) if return_margins else None
    loss = loss.to(x.dtype)
    return (loss, margins) if return_margins else loss


def adaptive_margin_loss_reference(
    x: torch.Tensor,
    labels: torch.Tensor,
    mu: float = 8.0,
    gamma: float = 2.1,
    reduction: str = "mean",
    return_margins: bool = False,
):
    """The specification of `adaptive_margin_loss`, in plain PyTorch: the whole distance matrix.

    Same arguments and result as `adaptive_margin_loss`; differentiable through PyTorch's autograd.
    """
    return adaptive_margin_loss(x, labels, mu, gamma, reduction, return_margins, backend="reference")


def _reference_loss(x, labels, mu, gamma, reduction):
    n = x.shape[0]
    distances = distance_matrix(x, x, squared=True)  # [N, N], clamped squared distances
    rows, cols = torch.triu_indices(n, n, offset=1, device=x.device)  # the pairs i < j
    pair = distances[rows, cols]  # [P]
    positive = labels[rows] == labels[cols]  # [P]
    pos, neg = pair[positive], pair[~positive]
    s, d = pos.detach().mean(), neg.detach().mean()
    mp = -torch.expm1(-mu * d) / mu
    mn = F.softplus(gamma * s) / gamma
    pos_terms, neg_terms = F.relu(pos - mp), F.relu(mn - neg)
    if reduction == "sum":
        loss = pos_terms.sum() + neg_terms.sum()
    elif reduction == "mean":
        loss = (pos_terms.sum() + neg_terms.sum()) / pair.shape[0]
    else:
        loss = pos_terms.mean() + neg_terms.mean()
    return loss, AdaptiveMargins(mp, mn, s, d)


def _check_args(x, labels, mu, gamma, reduction, return_margins) -> None:
    check_tensor("x", x, 2, "[N, D]")
    check_float_dtype("x", x)
    check_labels("labels", labels, x.shape[0], "N", x.device)
    check_float("mu", mu, positive=True)
    check_float("gamma", gamma, positive=True)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(return_margins, bool):
        raise TypeError(f"return_margins must be a bool, got {type(return_margins).__name__} {return_margins!r}")


def _check_pairs(labels: torch.Tensor) -> None:
    """The batch has a positive pair and a negative pair (reads the labels on the host once: a
    batch's few hundred labels cost less as a Python set than as tensor ops)."""
    values = labels.tolist()
    identities = len(set(values))
    if identities == len(values):
        raise ValueError(
            f"labels: the batch has no positive pair (all {labels.shape[0]} labels differ); the "
            "adaptive-margin loss needs identities with at least two images: use an identity-"
            "balanced sampler (A anchors, each with positives and negatives)"
        )
    if identities == 1:
        raise ValueError(
            f"labels: the batch has no negative pair (every label is {values[0]}); the "
            "adaptive-margin loss needs at least two identities: use an identity-balanced sampler"
        )


def _register_fake(forward_op) -> None:
    """Fake kernel of a registered forward op (shapes for torch.compile)."""

    @torch.library.register_fake(forward_op)
    def _(x, labels, mu, gamma, reduction, compute_grad):
        acc = accumulation_dtype(x.dtype)
        grad_shape = x.shape if compute_grad else (0, x.shape[1])
        return x.new_empty((), dtype=acc), x.new_empty(4, dtype=acc), x.new_empty(grad_shape)


def _register_python_autograd(forward_op) -> None:
    """Autograd of the Triton forward op: the rule the extension registers in C++ for its own
    forward op (csrc/autograd/adaptive_margin.cpp). The forward returns the gradient of the loss
    with respect to x (computed with the hinge terms when asked), so backward scales it."""

    def setup_context(ctx, inputs, output):
        _, _, _, _, _, compute_grad = inputs
        loss, margins, grad_x = output
        ctx.mark_non_differentiable(margins, grad_x)
        ctx.set_materialize_grads(False)
        ctx.compute_grad = compute_grad
        ctx.save_for_backward(grad_x)

    def backward(ctx, grad_loss, _grad_margins, _grad_grad_x):
        if grad_loss is None:
            return None, None, None, None, None, None
        refuse_double_backward("adaptive_margin_loss")
        if not ctx.compute_grad:
            raise RuntimeError(
                "adaptive_margin_loss: the forward ran with compute_grad=False, so it kept no "
                "gradient; call the op with compute_grad=True when x needs a gradient"
            )
        (grad_x,) = ctx.saved_tensors
        # loss.backward()'s unit gradient, on eager CPU tensors (traced ones are tensor subclasses
        # whose value is unknown): the kept gradient is the result, without a copy (autograd hands
        # it to x.grad, or clones it when the graph is retained).
        if type(grad_loss) is torch.Tensor and grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
            return grad_x, None, None, None, None, None
        return grad_x * grad_loss.to(grad_x.dtype), None, None, None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


_KERNELS = OpBackends("adaptive_margin_loss", triton_name="adaptive_margin")

if _extension.LOAD_ERROR is None:
    # Its autograd is registered in C++ by the extension.
    _register_fake(torch.ops.reidfast.adaptive_margin_forward.default)
    _KERNELS.add("cpu", torch.ops.reidfast.adaptive_margin_forward.default)
    if _extension.has_kernel("adaptive_margin_forward", "CUDA"):
        _KERNELS.add("cuda", torch.ops.reidfast.adaptive_margin_forward.default)

if triton_installed():
    from reidfast.kernels import adaptive_margin as _triton_kernels

    _TRITON_FORWARD = _KERNELS.add_triton("adaptive_margin_forward_triton", _triton_kernels.adaptive_margin_forward)
    _register_fake(_TRITON_FORWARD)
    _register_python_autograd(_TRITON_FORWARD)
    _KERNELS.add("triton", _TRITON_FORWARD)

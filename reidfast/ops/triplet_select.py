"""Pairwise distances, the generalised batch-hard selection, and the triplet losses built on it.

Distances (the convention of every public Re-ID codebase, in GEMM form so that it exports to ONNX):

    d(a, b) = sqrt(clamp(|a|^2 + |b|^2 - 2 a.b, min=1e-12)),   squared: the clamped value.

Selection (PLA, Eq. 3-4). For anchor i of x [N, D] with label y_i, against a reference set r [M, D]
with labels z (the batch itself by default, or a cross-batch memory bank):

    d_ap(i) = the k-th largest d(x_i, r_j) over positives j (z_j == y_i),
    d_an(i) = the p-th smallest d(x_i, r_j) over negatives j (z_j != y_i),

with k_eff = min(k, number of positives) and p_eff = min(p, number of negatives). Against the
batch itself the anchor is its own positive, at distance exactly 0 (and no gradient), so with K
images per identity k = K picks the easiest positive. Ties go to the lower index: positives are
ranked by (distance descending, index ascending), negatives by (distance ascending, index
ascending); NaN ranks as the largest distance, as in torch.sort. k = p = 1 is the batch-hard
selection.

Gradient flows only through the selected pairs. The fused backends compute distance tiles and keep
the running k largest positives and p smallest negatives per anchor, so the N x M matrix is never
materialised; their backward scatters each anchor's gradient to the anchor and its two chosen
partners (torch's index_add_: deterministic on the CPU; on CUDA it uses atomics, deterministic only
under torch.use_deterministic_algorithms(True)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from reidfast import _extension
from reidfast.backend import OpBackends, triton_installed
from reidfast._checks import check_float, check_float_dtype, check_int, check_labels, check_same_as, check_tensor
from reidfast.ops._autograd import double_backward_error, refuse_double_backward
from reidfast.ops.distance import DISTANCE_EPS, accumulation_dtype, distance_matrix

# The largest k and p of the GPU kernels (reidfast.backend's limit policy applies beyond); the CPU
# kernel has no bound.
MAX_GPU_RANK = 32
# The most anchors and reference rows of the GPU kernels' 32-bit tile indices.
_GPU_MAX_ROWS = {"cuda": 2**31 - 128, "triton": 2**31 - 1025}
_REDUCTIONS = ("mean", "sum", "none")


class TripletSelection(NamedTuple):
    """The pair chosen for each anchor.

    pos_dist, neg_dist (Tensor[N]): d_ap and d_an, in x's dtype.
    pos_index, neg_index (Tensor[N], int64): the chosen positive and negative, as rows of the
        reference set (of x itself when no `ref` is given).
    """

    pos_dist: torch.Tensor
    neg_dist: torch.Tensor
    pos_index: torch.Tensor
    neg_index: torch.Tensor


def triplet_select(
    x: torch.Tensor,
    labels: torch.Tensor,
    k: int = 1,
    p: int = 1,
    squared: bool = False,
    ref: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    backend: str | None = None,
) -> TripletSelection:
    """For each anchor, the k-th largest positive and the p-th smallest negative distance.

    Args:
        x (Tensor[N, D]): anchors' embeddings; float32, float16 or bfloat16 (float64 on the
            'reference' and 'cpu' backends).
        labels (Tensor[N]): identities, any integer dtype and values.
        k, p: ranks (>= 1) of the positive (largest first) and negative (smallest first).
        squared: select on squared distances (and return them).
        ref (Tensor[M, D]), ref_labels (Tensor[M]): select against this set (a memory bank)
            instead of x itself; both or neither, same dtype and device as x and labels.
        backend: "reference", "cpu", "cuda" or "triton"; None picks (see reidfast.backend). The
            GPU backends take k and p up to MAX_GPU_RANK (32); above, a requested GPU backend
            raises and an automatic choice runs the reference selection, which materialises the
            N x M distance matrix.

    Returns:
        TripletSelection(pos_dist, neg_dist, pos_index, neg_index), each [N]; differentiable with
        respect to x and ref through the selected pairs.

    Raises:
        ValueError: an anchor has no negative (or, against `ref`, no positive), naming its label.
            This check reads the labels on the host (one synchronisation when they are on a GPU);
            under torch.compile it is not made, and such an anchor gets neg_dist = +inf (pos_dist
            = -inf) and index -1, so that its hinge or soft-margin loss is 0.
    """
    name, x, labels, ref, ref_labels, self_reference = _prepare(x, labels, k, p, ref, ref_labels, backend)
    if name == "reference":
        return _reference_select(x, labels, ref, ref_labels, self_reference, k, p, squared)
    return TripletSelection(*_KERNELS.kernels[name](x, labels, ref, ref_labels, self_reference, k, p, squared))


def _prepare(x, labels, k, p, ref, ref_labels, backend):
    """Validates a selection's arguments and chooses its backend; returns (backend name, x,
    labels as int64, ref, ref_labels as int64, whether x is selected against itself)."""
    self_reference = _check_select_args(x, labels, k, p, ref, ref_labels)
    labels = labels.long()
    ref, ref_labels = (x, labels) if self_reference else (ref, ref_labels.long())
    if not torch.compiler.is_compiling():
        _check_label_structure(labels, ref_labels, self_reference)
    name = _KERNELS.choose(backend, x, lambda name: _limit(name, x.shape[0], ref.shape[0], k, p))
    return name, x, labels, ref, ref_labels, self_reference


def _limit(name: str, n: int, m: int, k: int, p: int) -> str | None:
    """Why backend `name` cannot select ranks k and p among n anchors and m reference rows (see
    reidfast.backend's limit policy)."""
    if name in ("cuda", "triton") and max(k, p) > MAX_GPU_RANK:
        # The GPU kernels keep the running selections in registers, which bounds k and p.
        return f"k and p must be at most {MAX_GPU_RANK} on the GPU kernels, got k={k}, p={p}"
    rows = _GPU_MAX_ROWS.get(name)
    if rows is not None and max(n, m) > rows:
        # Row and column indices of a tile are int32 there (offsets are int64).
        return f"N and M must be at most {rows} on the {name} kernel, got N={n}, M={m}"
    return None


def triplet_select_reference(
    x: torch.Tensor,
    labels: torch.Tensor,
    k: int = 1,
    p: int = 1,
    squared: bool = False,
    ref: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
) -> TripletSelection:
    """The specification of `triplet_select`, in plain PyTorch: the full distance matrix, sorted.

    Same arguments and result as `triplet_select`; differentiable through PyTorch's autograd.
    """
    return triplet_select(x, labels, k, p, squared, ref, ref_labels, backend="reference")


def _reference_select(x, labels, ref, ref_labels, self_reference, k, p, squared) -> TripletSelection:
    dist = distance_matrix(x, ref, squared)  # [N, M]
    same = labels[:, None] == ref_labels[None, :]  # [N, M] positives
    if self_reference:  # the anchor is its own positive at distance exactly 0
        is_self = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        dist = torch.where(is_self, torch.zeros_like(dist), dist)
    pos_dist, pos_index = _select_ranked(dist, same, k, largest=True)
    neg_dist, neg_index = _select_ranked(dist, ~same, p, largest=False)
    return TripletSelection(pos_dist.to(x.dtype), neg_dist.to(x.dtype), pos_index, neg_index)


def _select_ranked(dist, member, rank, largest):
    """Per row, the rank-th member (1-based, clamped to the member count) ordered by distance
    (descending if largest) and then index; (+-inf, -1) for rows without members."""
    order = torch.sort(dist, dim=1, descending=largest, stable=True).indices  # [N, M]
    is_member = member.gather(1, order)
    # Members first, each group keeping the distance order (a stable sort on the member flag).
    order = order.gather(1, torch.sort((~is_member).to(torch.int8), dim=1, stable=True).indices)
    count = member.sum(1)  # [N]
    position = (count.clamp(max=rank) - 1).clamp(min=0)  # [N]
    index = order.gather(1, position[:, None]).squeeze(1)
    value = dist.gather(1, index[:, None]).squeeze(1)
    empty = count == 0
    missing = torch.full_like(value, float("-inf") if largest else float("inf"))
    return torch.where(empty, missing, value), torch.where(empty, torch.full_like(index, -1), index)


def triplet_loss(
    x: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.3,
    soft: bool = False,
    k: int = 1,
    p: int = 1,
    squared: bool = False,
    reduction: str = "mean",
    ref: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Triplet loss on the selected pairs: per anchor max(0, margin + d_ap - d_an), or
    softplus(margin + d_ap - d_an) when `soft` (the soft-margin loss is soft=True, margin=0).

    With k = p = 1 and the hinge it is the batch-hard loss; with soft=True it is PLA's generalised
    batch-hard loss (Eq. 3-4). The selection runs on the fused kernels; the loss is elementwise on
    the N selected distances.

    Args:
        x (Tensor[N, D]), labels (Tensor[N]), k, p, squared, ref, ref_labels, backend: as in
            `triplet_select` (ref and ref_labels: a cross-batch memory bank); N >= 2.
        margin: m (any float; PLA searches it in [-0.1, 0.3]).
        reduction: "mean" over anchors, "sum", or "none" (Tensor[N]).

    Returns:
        The loss in x's dtype (computed in float32), a scalar unless reduction="none".
    """
    check_tensor("x", x, 2, "[N, D]")
    if x.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 embeddings for a triplet loss, got shape {tuple(x.shape)}")
    check_float("margin", margin)
    if not isinstance(soft, bool):
        raise TypeError(f"soft must be a bool, got {type(soft).__name__} {soft!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    name, x, labels, ref, ref_labels, self_reference = _prepare(x, labels, k, p, ref, ref_labels, backend)
    if name in _FUSED_LOSS:
        # The selection and the loss in one op and one autograd node (the same computation).
        return _FUSED_LOSS[name](x, labels, ref, ref_labels, self_reference, k, p, squared, float(margin), soft, reduction)
    if name == "reference":
        selection = _reference_select(x, labels, ref, ref_labels, self_reference, k, p, squared)
    else:
        selection = TripletSelection(*_KERNELS.kernels[name](x, labels, ref, ref_labels, self_reference, k, p, squared))
    return _triplet_loss_from(selection, margin, soft, reduction).to(x.dtype)


def _triplet_loss_from(selection: TripletSelection, margin: float, soft: bool, reduction: str):
    """The loss of `triplet_loss` from a selection (float32 or float64): the specification of the
    fused op reidfast::triplet_loss (csrc/autograd/triplet_select.cpp)."""
    acc = accumulation_dtype(selection.pos_dist.dtype)
    z = margin + selection.pos_dist.to(acc) - selection.neg_dist.to(acc)  # [N]
    losses = F.softplus(z) if soft else F.relu(z)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _check_select_args(x, labels, k, p, ref, ref_labels) -> bool:
    """Validates triplet_select's arguments; returns whether x is selected against itself."""
    check_tensor("x", x, 2, "[N, D]")
    check_float_dtype("x", x)
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one embedding, got shape {tuple(x.shape)}")
    check_labels("labels", labels, x.shape[0], "N", x.device)
    check_int("k", k, minimum=1)
    check_int("p", p, minimum=1)
    if (ref is None) != (ref_labels is None):
        raise ValueError("ref and ref_labels must be given together (or neither)")
    if ref is None:
        return True
    check_tensor("ref", ref, 2, "[M, D]")
    check_same_as("ref", ref, "x", x)
    check_labels("ref_labels", ref_labels, ref.shape[0], "M", x.device)
    return False


def _check_label_structure(labels: torch.Tensor, ref_labels: torch.Tensor, self_reference: bool) -> None:
    """Every anchor has a negative in the reference set, and, against a memory bank, a positive.

    Against the batch itself an anchor lacks a negative only when every label is the same: one
    aminmax and one read on the host. Against a bank, counts by binary search in the sorted bank
    labels: O((N + M) log M), no N x M mask.
    """
    if self_reference:
        lowest, highest = torch.aminmax(labels)
        if bool(lowest == highest):
            _raise_no_negative(lowest.item(), "the batch")
        return
    sorted_ref = ref_labels.sort().values
    same = torch.searchsorted(sorted_ref, labels, right=True) - torch.searchsorted(sorted_ref, labels)
    no_negative = same == ref_labels.shape[0]
    if bool(no_negative.any()):
        _raise_no_negative(labels[no_negative.nonzero()[0, 0]].item(), "ref")
    if bool((same == 0).any()):
        label = labels[(same == 0).nonzero()[0, 0]].item()
        raise ValueError(f"labels: an anchor with label {label} has no positive in ref_labels")


def _raise_no_negative(label: int, where: str) -> None:
    raise ValueError(
        f"labels: an anchor with label {label} has no negative in {where} (every label there is "
        f"{label}); a triplet needs at least two identities: use an identity-balanced sampler"
    )


def _register_fake(forward_op) -> None:
    """Fake kernel of a registered forward op (shapes for torch.compile)."""

    @torch.library.register_fake(forward_op)
    def _(x, labels, ref, ref_labels, self_reference, k, p, squared):
        n = x.shape[0]
        return x.new_empty(n), x.new_empty(n), labels.new_empty(n), labels.new_empty(n)


def _register_loss_fake(loss_op) -> None:
    """Fake kernel of the fused loss op."""

    @torch.library.register_fake(loss_op)
    def _(x, labels, ref, ref_labels, self_reference, k, p, squared, margin, soft, reduction):
        return x.new_empty((x.shape[0],) if reduction == "none" else ())


def _register_python_autograd(forward_op) -> None:
    """Autograd of the Triton forward op, whose gradient is the backward op: the rule the
    extension registers in C++ for its own forward op (csrc/autograd/triplet_select.cpp)."""

    def setup_context(ctx, inputs, output):
        x, _, ref, _, self_reference, _, _, squared = inputs
        pos_dist, neg_dist, pos_index, neg_index = output
        ctx.mark_non_differentiable(pos_index, neg_index)
        ctx.set_materialize_grads(False)
        ctx.self_reference, ctx.squared = self_reference, squared
        # A frozen memory bank gets no [M, D] gradient: the backward op neither allocates nor
        # computes it.
        ctx.ref_grad = not self_reference and ctx.needs_input_grad[2]
        ctx.save_for_backward(x, ref, pos_dist, neg_dist, pos_index, neg_index)

    def backward(ctx, grad_pos, grad_neg, _grad_pos_index, _grad_neg_index):
        if grad_pos is None and grad_neg is None:
            return None, None, None, None, None, None, None, None
        refuse_double_backward("triplet_select")
        x, ref, pos_dist, neg_dist, pos_index, neg_index = ctx.saved_tensors
        grad_pos = torch.zeros_like(pos_dist) if grad_pos is None else grad_pos
        grad_neg = torch.zeros_like(neg_dist) if grad_neg is None else grad_neg
        grad_x, grad_ref = _BACKWARD_OP(
            grad_pos, grad_neg, x, ref, pos_dist, neg_dist, pos_index, neg_index, ctx.self_reference, ctx.squared,
            ctx.ref_grad,
        )
        # Against itself, ref is x: the partners' terms are already in grad_x.
        return grad_x, None, grad_ref if ctx.ref_grad else None, None, None, None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


def _register_backward(backward_op) -> None:
    """Fake kernel of the backward op; it has no gradient of its own."""

    @torch.library.register_fake(backward_op)
    def _(grad_pos, grad_neg, x, ref, pos_dist, neg_dist, pos_index, neg_index, self_reference, squared, ref_grad):
        bank_rows = ref.shape[0] if ref_grad and not self_reference else 0
        return torch.empty_like(x), ref.new_empty(bank_rows, ref.shape[1])

    def differentiate_backward(ctx, *grads):
        raise double_backward_error("triplet_select")

    torch.library.register_autograd(backward_op, differentiate_backward)


_KERNELS = OpBackends("triplet_select")
# The backends whose selection kernel is also fused with the loss (reidfast::triplet_loss).
_FUSED_LOSS: dict[str, torch._ops.OpOverload] = {}

if _extension.LOAD_ERROR is None:
    _BACKWARD_OP = torch.ops.reidfast.triplet_select_backward.default
    _register_backward(_BACKWARD_OP)
    # Its autograd is registered in C++ by the extension.
    _register_fake(torch.ops.reidfast.triplet_select_forward.default)
    _register_loss_fake(torch.ops.reidfast.triplet_loss.default)
    _KERNELS.add("cpu", torch.ops.reidfast.triplet_select_forward.default)
    _FUSED_LOSS["cpu"] = torch.ops.reidfast.triplet_loss.default
    if _extension.has_kernel("triplet_select_forward", "CUDA"):
        _KERNELS.add("cuda", torch.ops.reidfast.triplet_select_forward.default)
        _FUSED_LOSS["cuda"] = torch.ops.reidfast.triplet_loss.default

if triton_installed() and _extension.LOAD_ERROR is None:
    # The Triton forward shares the backward op (its CPU kernel serves the interpreter's CPU
    # tensors, its CUDA kernel the GPU's).
    from reidfast.kernels import triplet_select as _triton_kernels

    _TRITON_FORWARD = _KERNELS.add_triton("triplet_select_forward_triton", _triton_kernels.triplet_select_forward)
    _register_fake(_TRITON_FORWARD)
    _register_python_autograd(_TRITON_FORWARD)
    _KERNELS.add("triton", _TRITON_FORWARD)

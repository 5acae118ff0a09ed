"""The triplet losses as a module: batch-hard (k = p = 1, the hinge) and PLA's generalised
batch-hard soft-margin loss (Eq. 3-4), on `reidfast.ops.triplet_loss`."""

import torch
import torch.nn.functional as F
from torch import nn

from reidfast._checks import check_float, check_int
from reidfast.ops.triplet_select import _REDUCTIONS, triplet_loss


class TripletLoss(nn.Module):
    """Triplet loss over a batch of embeddings and their identity labels.

    Per anchor max(0, margin + d_ap - d_an) (or softplus(...) when `soft`), with d_ap the k-th
    largest distance to a positive (the anchor itself included, at distance 0) and d_an the p-th
    smallest distance to a negative (see `reidfast.ops.triplet_select`).

    Args:
        margin: m; the Pyramid paper uses 1.4, MGN 1.2, the usual batch-hard default is 0.3.
        soft: softplus instead of the hinge (the soft-margin loss is soft=True, margin=0).
        k, p: ranks of the selected positive and negative (1, 1: batch-hard).
        squared: squared Euclidean distances.
        normalize: L2-normalise the embeddings first.
        reduction: "mean" over anchors, "sum" or "none".
        backend: as for every op (see reidfast.backend).

    Shape:
        embeddings (Tensor[N, D]), labels (Tensor[N]) -> scalar (or Tensor[N] for "none").
    """

    def __init__(
        self,
        margin: float = 0.3,
        soft: bool = False,
        k: int = 1,
        p: int = 1,
        squared: bool = False,
        normalize: bool = False,
        reduction: str = "mean",
        backend: str | None = None,
    ):
        super().__init__()
        check_float("margin", margin)
        check_int("k", k, minimum=1)
        check_int("p", p, minimum=1)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.margin = float(margin)
        self.soft = bool(soft)
        self.k, self.p = k, p
        self.squared = bool(squared)
        self.normalize = bool(normalize)
        self.reduction = reduction
        self.backend = backend

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        return triplet_loss(
            embeddings,
            labels,
            margin=self.margin,
            soft=self.soft,
            k=self.k,
            p=self.p,
            squared=self.squared,
            reduction=self.reduction,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, soft={self.soft}, k={self.k}, p={self.p}, squared={self.squared}, "
            f"normalize={self.normalize}, reduction={self.reduction!r}"
        )

"""The center loss with learnable class centres (Wen et al., ECCV 2016), as PLR-OSNet uses it."""

import torch
from torch import nn

from reidfast._checks import check_float_dtype, check_int, check_labels, check_tensor


class CenterLoss(nn.Module):
    """Mean squared Euclidean distance of each feature to the centre of its class.

        L_C = (1 / B) * sum_i |x_i - c_{y_i}|^2

    This is the loss of the common Re-ID codebases' CenterLoss (the sum over the batch of the masked
    distance matrix, divided by B) with their clamp of every distance to [1e-12, 1e12] removed: that
    clamp added 1e-12 for each of the B * (num_classes - 1) masked-out entries and cut gradients of
    far features. Wen et al. write (1 / 2) * sum_i |x_i - c_{y_i}|^2 over the mini-batch; this module
    has neither their factor 1/2 nor their sum, so its value is 2 / B times theirs. The difference
    is absorbed by the loss weight (PLR-OSNet's 0.0005).

    The centres are an nn.Parameter learnt by the optimizer with the network (the gradient of L_C
    with respect to c_j is -(2 / B) * sum_{i: y_i = j} (x_i - c_j)), not Wen et al.'s separate
    moving-average update: add this module's parameters to the optimizer.

    Args:
        num_classes: number of identities (>= 1); labels are in [0, num_classes).
        feat_dim: dimension D of the features (>= 1).

    Attributes:
        centers (Parameter[num_classes, feat_dim]): initialised N(0, 1).

    Shape:
        features (Tensor[B, D]), labels (Tensor[B]) -> scalar, in the promoted dtype of the features
        and the centres.
    """

    def __init__(self, num_classes: int, feat_dim: int):
        super().__init__()
        check_int("num_classes", num_classes, minimum=1)
        check_int("feat_dim", feat_dim, minimum=1)
        self.num_classes, self.feat_dim = num_classes, feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_tensor("features", features, 2, "[B, D]")
        check_float_dtype("features", features)
        if features.shape[1] != self.feat_dim:
            raise ValueError(
                f"features must have feat_dim={self.feat_dim} columns, got shape {tuple(features.shape)}"
            )
        check_labels("labels", labels, features.shape[0], "B", features.device)
        _check_class_labels(labels, self.num_classes)
        return (features - self.centers[labels]).pow(2).sum(1).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}"


def _check_class_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Class-indexed labels are in [0, num_classes) (one read of the labels' extremes on the host)."""
    if labels.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(labels)).tolist()
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"labels must be class indices in [0, {num_classes}), got label {bad}")

"""The adaptive-margin loss as a module, keeping the last batch's margins for logging."""

import torch
from torch import nn

from reidfast._checks import check_float
from reidfast.ops.adaptive_margin import REDUCTIONS, AdaptiveMargins, adaptive_margin_loss


class AdaptiveMarginLoss(nn.Module):
    """Adaptive-margin pairwise loss over a batch (arXiv:1707.00409, Eq. 5-9; docs/methods.md
    section 4).

    Args:
        mu, gamma: the margins' parameters (> 0); defaults are the paper's best on PRID2011.
        reduction: "mean" over all pairs, "sum" (the paper) or "balanced".
        backend: as for every op (see reidfast.backend).

    Attributes:
        last_margins (AdaptiveMargins or None): (mp, mn, s, d) of the last batch, detached.

    Shape:
        embeddings (Tensor[N, D]), labels (Tensor[N]) -> scalar.
    """

    def __init__(self, mu: float = 8.0, gamma: float = 2.1, reduction: str = "mean", backend: str | None = None):
        super().__init__()
        check_float("mu", mu, positive=True)
        check_float("gamma", gamma, positive=True)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.mu, self.gamma, self.reduction, self.backend = float(mu), float(gamma), reduction, backend
        self.last_margins: AdaptiveMargins | None = None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss, margins = adaptive_margin_loss(
            embeddings, labels, self.mu, self.gamma, self.reduction, return_margins=True, backend=self.backend
        )
        self.last_margins = AdaptiveMargins(*(m.detach() for m in margins))
        return loss

    def extra_repr(self) -> str:
        return f"mu={self.mu}, gamma={self.gamma}, reduction={self.reduction!r}"

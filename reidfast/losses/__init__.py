"""Loss modules built on the fused ops, and each method's whole training criterion."""

from reidfast.losses.adaptive_margin import AdaptiveMarginLoss
from reidfast.losses.center import CenterLoss
from reidfast.losses.criteria import (
    AdaptiveMarginCriterion,
    Criterion,
    CriterionResult,
    MGNCriterion,
    PCBCriterion,
    PLACriterion,
    PLROSNetCriterion,
    PyramidCriterion,
    build_criterion,
)
from reidfast.losses.dynamic import DynamicLossWeighting, WeightedLoss
from reidfast.losses.triplet import TripletLoss

__all__ = [
    "AdaptiveMarginCriterion",
    "AdaptiveMarginLoss",
    "CenterLoss",
    "Criterion",
    "CriterionResult",
    "DynamicLossWeighting",
    "MGNCriterion",
    "PCBCriterion",
    "PLACriterion",
    "PLROSNetCriterion",
    "PyramidCriterion",
    "TripletLoss",
    "WeightedLoss",
    "build_criterion",
]

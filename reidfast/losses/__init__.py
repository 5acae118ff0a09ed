"""Loss modules built on the fused ops."""

from reidfast.losses.adaptive_margin import AdaptiveMarginLoss
from reidfast.losses.triplet import TripletLoss

__all__ = ["AdaptiveMarginLoss", "TripletLoss"]

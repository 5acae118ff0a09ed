"""Loss modules built on the fused ops."""

from reidfast.losses.triplet import TripletLoss

__all__ = ["TripletLoss"]

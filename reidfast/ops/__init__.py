"""Functional ops of reidfast: each with argument checks, a plain-PyTorch reference and fused
backends (see reidfast.backend)."""

from reidfast.ops.adaptive_margin import AdaptiveMargins, adaptive_margin_loss, adaptive_margin_loss_reference
from reidfast.ops.distance import pairwise_distance
from reidfast.ops.pyramid_pool import pyramid_pool, pyramid_pool_reference, pyramid_windows
from reidfast.ops.triplet_select import (
    TripletSelection,
    triplet_loss,
    triplet_select,
    triplet_select_reference,
)

__all__ = [
    "AdaptiveMargins",
    "adaptive_margin_loss",
    "adaptive_margin_loss_reference",
    "TripletSelection",
    "pairwise_distance",
    "pyramid_pool",
    "pyramid_pool_reference",
    "pyramid_windows",
    "triplet_loss",
    "triplet_select",
    "triplet_select_reference",
]

"""Training utilities: the batch samplers of the metric losses (identity-balanced, Pyramid's
switching between identity-balanced and random batches, the adaptive-margin paper's anchor-based
units), resumable mid-epoch and split across distributed ranks."""

from reidfast.training.samplers import AnchorBatchSampler, IdentityBatchSampler, SwitchingBatchSampler

__all__ = ["AnchorBatchSampler", "IdentityBatchSampler", "SwitchingBatchSampler"]

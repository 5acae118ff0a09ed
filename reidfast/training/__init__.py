"""Training utilities: the identity-balanced batch sampler the metric losses need."""

from reidfast.training.samplers import IdentityBatchSampler

__all__ = ["IdentityBatchSampler"]

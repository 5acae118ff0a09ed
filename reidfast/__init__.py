"""reidfast: fused kernels and a training API for person re-identification on PyTorch."""

from reidfast import evaluation, losses, models, nn, ops, retrieval, training
from reidfast.backend import available_backends
from reidfast.nn import PyramidHead

__version__ = "0.1.0"

__all__ = ["PyramidHead", "available_backends", "evaluation", "losses", "models", "nn", "ops", "retrieval", "training"]

"""reidfast: fused kernels and a training API for person re-identification on PyTorch."""

from reidfast import evaluation, losses, ops, retrieval
from reidfast.backend import available_backends

__version__ = "0.1.0"

__all__ = ["available_backends", "losses", "ops"]

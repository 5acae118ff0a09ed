"""Functional ops of reidfast: each with argument checks, a plain-PyTorch reference and fused
backends (see reidfast.backend)."""

from reidfast.ops.pyramid_pool import pyramid_pool, pyramid_pool_reference, pyramid_windows

__all__ = ["pyramid_pool", "pyramid_pool_reference", "pyramid_windows"]

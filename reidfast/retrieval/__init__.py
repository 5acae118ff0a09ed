"""Retrieval over large galleries: exact chunked top-k search, and FAISS IVF-PQ for millions of
entries (optional dependency)."""

from reidfast.retrieval.gallery import GalleryIndex

__all__ = ["GalleryIndex"]

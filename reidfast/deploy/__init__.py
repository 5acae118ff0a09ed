"""Serving: `Embedder`, one interface from images to embeddings over eager PyTorch,
torch.compile, ONNX Runtime and TensorRT, with the model's own test preprocessing. With
reidfast.retrieval.GalleryIndex it makes a searchable gallery (examples/index_gallery.py)."""

from reidfast.deploy.embedder import RUNTIMES, Embedder

__all__ = ["Embedder", "RUNTIMES"]

"""A searchable gallery of embeddings: exact search by chunked top-k, approximate search by FAISS.

Distances: "euclidean", sqrt(clamp(|q|^2 + |g|^2 - 2 q.g, 1e-12)) (reidfast.ops.pairwise_distance),
or "cosine", 1 - q.g / (|q| |g|). Smaller is closer.

Exact search ("exact") splits queries and gallery into chunks: each [B, C] distance block is
reduced to its k smallest per query and merged with the running k best, so memory is bounded by
the chunk sizes, never by Q x G. Approximate search ("ivfpq") uses a FAISS IVF-PQ index (an
inverted file of nlist coarse cells, vectors compressed by product quantisation into m codes of
nbits each; nprobe cells visited per query), the usual choice for millions of gallery entries. FAISS
is an optional dependency (`pip install faiss-cpu`, or a GPU build); it is imported on first use.
The embeddings themselves are kept (float32, on the index's device), so exact search and the
approximate index's recall against it are always available, and the index is trained and filled
from them when first searched after an add.
"""

from __future__ import annotations

import importlib
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from reidfast._checks import check_int, check_tensor
from reidfast.ops.distance import pairwise_distance

_METRICS = ("euclidean", "cosine")
_METHODS = ("exact", "ivfpq")
_FORMAT = "reidfast.GalleryIndex"
_VERSION = 1
# Working memory of one exact-search distance block, in bytes.
DEFAULT_BLOCK_BYTES = 64 * 2**20


class GalleryIndex:
    """Gallery embeddings with add / search / save / load.

    Args:
        metric: "euclidean" or "cosine".
        method: "exact" (chunked top-k, this package) or "ivfpq" (FAISS, approximate).
        device: where the embeddings live and exact search runs ("cpu", "cuda", ...).
        nlist: IVF cells for "ivfpq"; None: about 4 sqrt(N), at most N / 39 (FAISS wants 39
            training points per cell).
        m: PQ sub-quantisers for "ivfpq" (must divide the dimension); None: the largest divisor
            of D that is at most min(64, D / 2).
        nbits: bits per PQ code (FAISS default 8).
        nprobe: cells visited per query for "ivfpq".
        block_bytes: working memory of one exact-search distance block.
    """

    def __init__(
        self,
        metric: str = "euclidean",
        method: str = "exact",
        device: str | torch.device = "cpu",
        nlist: int | None = None,
        m: int | None = None,
        nbits: int = 8,
        nprobe: int = 16,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ):
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        for name, value in (("nlist", nlist), ("m", m)):
            if value is not None:
                check_int(name, value, minimum=1)
        check_int("nbits", nbits, minimum=1)
        check_int("nprobe", nprobe, minimum=1)
        check_int("block_bytes", block_bytes, minimum=1)
        if method == "ivfpq":
            _faiss()  # fail here, with the install hint, rather than at the first search
        self.metric, self.method, self.device = metric, method, torch.device(device)
        self.nlist, self.m, self.nbits, self.nprobe = nlist, m, nbits, nprobe
        self.block_bytes = block_bytes
        self.embeddings: torch.Tensor | None = None  # [N, D] float32
        self.ids: torch.Tensor | None = None  # [N] int64
        self._faiss_index = None  # built from the embeddings when first searched

    def __len__(self) -> int:
        return 0 if self.embeddings is None else self.embeddings.shape[0]

    @property
    def dim(self) -> int | None:
        return None if self.embeddings is None else self.embeddings.shape[1]

    def add(self, embeddings, ids=None) -> None:
        """Appends embeddings (ndarray or Tensor[N, D], float) with their ids (Tensor[N], integer;
        default: their positions in the index, 0, 1, ...)."""
        embeddings = _as_float_matrix("embeddings", embeddings, self.device)
        if self.embeddings is not None and embeddings.shape[1] != self.dim:
            raise ValueError(
                f"embeddings must have the index's dimension D={self.dim}, got shape {tuple(embeddings.shape)}"
            )
        if ids is None:
            ids = torch.arange(len(self), len(self) + embeddings.shape[0])
        ids = torch.as_tensor(ids)
        check_tensor("ids", ids, 1, "[N]")
        if ids.dtype == torch.bool or ids.dtype.is_floating_point or ids.dtype.is_complex:
            raise TypeError(f"ids must have an integer dtype, got {ids.dtype}")
        if ids.shape[0] != embeddings.shape[0]:
            raise ValueError(f"ids must hold N={embeddings.shape[0]} ids, got {ids.shape[0]}")
        ids = ids.to(self.device, torch.int64)
        if self.embeddings is None:
            self.embeddings, self.ids = embeddings, ids
        else:
            self.embeddings = torch.cat([self.embeddings, embeddings])
            self.ids = torch.cat([self.ids, ids])
        self._faiss_index = None

    def search(self, queries, k: int = 10, method: str | None = None):
        """The k nearest gallery entries of each query.

        Args:
            queries (ndarray or Tensor[Q, D]): float.
            k: neighbours per query (>= 1).
            method: "exact" or "ivfpq"; None: the index's method.

        Returns:
            distances (Tensor[Q, k], float32) ascending, and ids (Tensor[Q, k], int64), on the
            index's device. Where fewer than k entries are found (k > N, or empty IVF cells), the
            row is padded with inf and id -1. Entries at exactly equal distances come in the order
            torch.topk (or FAISS) gives them.
        """
        method = self.method if method is None else method
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        check_int("k", k, minimum=1)
        if self.embeddings is None:
            raise ValueError("search: the index is empty; add embeddings first")
        queries = _as_float_matrix("queries", queries, self.device)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries must have the index's dimension D={self.dim}, got shape {tuple(queries.shape)}")
        if method == "exact":
            distances, positions = self._exact(queries, k)
        else:
            distances, positions = self._approximate(queries, k)
        found = positions >= 0
        ids = torch.where(found, self.ids[positions.clamp(min=0)], torch.full_like(positions, -1))
        return torch.where(found, distances, torch.full_like(distances, float("inf"))), ids

    def _distances(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        if self.metric == "euclidean":
            return pairwise_distance(queries, gallery)
        return 1.0 - F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).t()

    def _exact(self, queries: torch.Tensor, k: int):
        """Chunked top-k: [B, C] blocks of at most block_bytes, merged into the running k best."""
        num_q, num_g = queries.shape[0], len(self)
        kept = min(k, num_g)
        # Four float32 [B, C] temporaries per block (product, distances, topk copies).
        rows = max(1, min(num_q, math.isqrt(max(1, self.block_bytes // 16))))
        cols = max(kept, min(num_g, self.block_bytes // (16 * rows)))
        distances = torch.full((num_q, k), float("inf"), device=self.device)
        positions = torch.full((num_q, k), -1, dtype=torch.int64, device=self.device)
        for start in range(0, num_q, rows):
            block = queries[start : start + rows]
            best = torch.full((block.shape[0], 0), float("inf"), device=self.device)
            best_at = torch.empty((block.shape[0], 0), dtype=torch.int64, device=self.device)
            for first in range(0, num_g, cols):
                chunk = self._distances(block, self.embeddings[first : first + cols])  # [B, C]
                value, where = chunk.topk(min(kept, chunk.shape[1]), dim=1, largest=False)
                best = torch.cat([best, value], 1)
                best_at = torch.cat([best_at, where + first], 1)
                if best.shape[1] > kept:
                    best, keep = best.topk(kept, dim=1, largest=False)
                    best_at = best_at.gather(1, keep)
            distances[start : start + rows, :kept] = best  # ascending: topk sorts its output
            positions[start : start + rows, :kept] = best_at
        return distances, positions

    def _approximate(self, queries: torch.Tensor, k: int):
        index = self._built_faiss_index()
        index.nprobe = self.nprobe
        vectors = self._faiss_vectors(queries)
        scores, positions = index.search(vectors, k)
        scores, positions = torch.from_numpy(scores).to(self.device), torch.from_numpy(positions).to(self.device)
        if self.metric == "euclidean":
            distances = scores.clamp(min=1e-12).sqrt()  # FAISS returns squared L2
        else:
            distances = 1.0 - scores  # inner products of unit vectors
        return distances, positions.long()

    def _faiss_vectors(self, x: torch.Tensor) -> np.ndarray:
        if self.metric == "cosine":
            x = F.normalize(x, dim=1)
        return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)

    def _built_faiss_index(self):
        """The IVF-PQ index over the current embeddings, trained and filled when first needed."""
        if self._faiss_index is not None:
            return self._faiss_index
        faiss = _faiss()
        num, dim = self.embeddings.shape
        nlist = self.nlist or max(1, min(round(4 * math.sqrt(num)), num // 39))
        m = self.m or max(d for d in range(1, min(64, max(1, dim // 2)) + 1) if dim % d == 0)
        if dim % m:
            raise ValueError(f"m must divide the dimension D={dim}, got {m}")
        if nlist > num:
            raise ValueError(f"nlist must be at most the number of embeddings N={num}, got {nlist}")
        metric = faiss.METRIC_L2 if self.metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
        quantizer = faiss.IndexFlatL2(dim) if self.metric == "euclidean" else faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, self.nbits, metric)
        vectors = self._faiss_vectors(self.embeddings)
        index.train(vectors)
        index.add(vectors)
        self._faiss_index = index
        return index

    def save(self, path: str | os.PathLike) -> None:
        """Writes the index (settings, embeddings, ids and any built FAISS index) to one file."""
        state = {
            "format": _FORMAT,
            "version": _VERSION,
            "metric": self.metric,
            "method": self.method,
            "nlist": self.nlist,
            "m": self.m,
            "nbits": self.nbits,
            "nprobe": self.nprobe,
            "embeddings": None if self.embeddings is None else self.embeddings.cpu(),
            "ids": None if self.ids is None else self.ids.cpu(),
            "faiss": None,
        }
        if self._faiss_index is not None:
            state["faiss"] = torch.from_numpy(_faiss().serialize_index(self._faiss_index))
        torch.save(state, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "GalleryIndex":
        """Reads an index written by `save`, onto `device`."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"path: {os.fspath(path)!r} is not a saved GalleryIndex")
        if state["version"] != _VERSION:
            raise ValueError(
                f"path: GalleryIndex format version {state['version']} is not supported (this is {_VERSION})"
            )
        settings = {name: state[name] for name in ("metric", "method", "nlist", "m", "nbits", "nprobe")}
        index = cls(device=device, **settings)
        if state["embeddings"] is not None:
            index.add(state["embeddings"], state["ids"])
        if state["faiss"] is not None:
            index._faiss_index = _faiss().deserialize_index(state["faiss"].numpy())
        return index


def _faiss():
    try:
        return importlib.import_module("faiss")
    except ImportError as error:
        raise ImportError(
            "GalleryIndex(method='ivfpq') needs FAISS: `pip install faiss-cpu` (or a GPU build of faiss)"
        ) from error


def _as_float_matrix(name: str, value, device) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or a Tensor [N, D], got {type(value).__name__}")
    check_tensor(name, value, 2, "[N, D]")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    return value.detach().to(device=device, dtype=torch.float32)

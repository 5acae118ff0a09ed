"""GalleryIndex: exact chunked top-k against a full sort, add / save / load round trips, FAISS
IVF-PQ recall against exact search (skipped without faiss), the install hint where faiss cannot be
imported, and each error."""

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidfast.ops import pairwise_distance
from reidfast.retrieval import GalleryIndex

HAS_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="needs faiss (pip install faiss-cpu)")


def clustered(count, dim, centres, generator, spread=0.5):
    return centres[torch.randint(0, centres.shape[0], (count,), generator=generator)] + spread * torch.randn(
        count, dim, generator=generator
    )


def full_distances(queries, gallery, metric):
    if metric == "euclidean":
        return pairwise_distance(queries, gallery)
    return 1 - F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).t()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("block_bytes", [1, 5_000, 2**26])  # one query row per block, a few, all
def test_exact_search_equals_full_sort(metric, block_bytes):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 24, generator=generator)
    gallery, queries = clustered(1000, 24, centres, generator), clustered(37, 24, centres, generator)
    index = GalleryIndex(metric=metric, block_bytes=block_bytes)
    index.add(gallery[:600])
    index.add(gallery[600:].numpy())  # numpy too, appended
    distances, ids = index.search(queries, k=7)
    expected_distances, expected_ids = full_distances(queries, gallery, metric).sort(dim=1)
    torch.testing.assert_close(distances, expected_distances[:, :7], rtol=1e-5, atol=1e-5)
    assert torch.equal(ids, expected_ids[:, :7])


def test_ids_padding_and_k_beyond_the_gallery():
    index = GalleryIndex()
    index.add(torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]]), ids=torch.tensor([10, 20, 30]))
    distances, ids = index.search(torch.tensor([[0.0, 0.1]]), k=5)
    assert ids.tolist() == [[10, 30, 20, -1, -1]]
    torch.testing.assert_close(distances[0, :3], torch.tensor([0.1, 1.0049876, 4.9203658]))
    assert torch.isinf(distances[0, 3:]).all()


def test_save_and_load_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(1)
    gallery, queries = torch.randn(300, 16, generator=generator), torch.randn(9, 16, generator=generator)
    index = GalleryIndex(metric="cosine")
    index.add(gallery, ids=torch.arange(300) * 3)
    index.save(tmp_path / "gallery.pt")
    loaded = GalleryIndex.load(tmp_path / "gallery.pt")
    assert (loaded.metric, loaded.method, len(loaded), loaded.dim) == ("cosine", "exact", 300, 16)
    for got, expected in zip(loaded.search(queries, 4), index.search(queries, 4)):
        assert torch.equal(got, expected)


@needs_faiss
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_ivfpq_recall_against_exact(metric, record_property, tmp_path):
    """IVF-PQ on clustered embeddings: recall@10 against exact search, recorded as a test property
    (seen here: 0.88 euclidean, 0.78 cosine) and bounded below; the
    trained index survives save / load."""
    generator = torch.Generator().manual_seed(2)
    centres = torch.randn(200, 32, generator=generator)
    # 10,000 embeddings: FAISS wants 39 training points per PQ centroid (2^8 of them).
    gallery, queries = clustered(10_000, 32, centres, generator), clustered(200, 32, centres, generator)
    index = GalleryIndex(metric=metric, method="ivfpq", nlist=32, m=16, nbits=8, nprobe=8)
    index.add(gallery)
    _, approximate = index.search(queries, k=10)
    _, exact = index.search(queries, k=10, method="exact")
    recall = np.mean([len(set(a.tolist()) & set(e.tolist())) / 10 for a, e in zip(approximate, exact)])
    record_property(f"ivfpq_recall_at_10_{metric}", recall)
    assert recall >= 0.7, f"IVF-PQ recall@10 against exact search: {recall:.3f}"
    index.save(tmp_path / "ivfpq.pt")
    assert torch.equal(GalleryIndex.load(tmp_path / "ivfpq.pt").search(queries, k=10)[1], approximate)


def test_without_faiss_exact_search_works_and_ivfpq_says_how_to_install(monkeypatch):
    # None in sys.modules makes `import faiss` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"needs FAISS: `pip install faiss-cpu` \(or a GPU build of faiss\)"):
        GalleryIndex(method="ivfpq")
    index = GalleryIndex()
    gallery = torch.randn(50, 8, generator=torch.Generator().manual_seed(4))
    index.add(gallery)
    _, ids = index.search(gallery[:3], k=1)
    assert ids.flatten().tolist() == [0, 1, 2]


@pytest.mark.gpu
def test_exact_search_on_cuda():
    generator = torch.Generator().manual_seed(3)
    gallery, queries = torch.randn(500, 16, generator=generator), torch.randn(20, 16, generator=generator)
    cpu, cuda = GalleryIndex(), GalleryIndex(device="cuda")
    cpu.add(gallery)
    cuda.add(gallery)
    got, expected = cuda.search(queries, 5), cpu.search(queries, 5)
    assert got[1].is_cuda and torch.equal(got[1].cpu(), expected[1])


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"metric must be one of \('euclidean', 'cosine'\), got 'l2'"):
        GalleryIndex(metric="l2")
    with pytest.raises(ValueError, match=r"method must be one of \('exact', 'ivfpq'\), got 'hnsw'"):
        GalleryIndex(method="hnsw")
    with pytest.raises(ValueError, match="nprobe must be >= 1, got 0"):
        GalleryIndex(nprobe=0)
    index = GalleryIndex()
    with pytest.raises(ValueError, match="search: the index is empty"):
        index.search(torch.zeros(1, 4))
    with pytest.raises(TypeError, match="embeddings must be a numpy array or a Tensor"):
        index.add([[0.0]])
    with pytest.raises(TypeError, match="embeddings must have a floating dtype, got torch.int64"):
        index.add(torch.zeros(2, 4, dtype=torch.int64))
    index.add(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="embeddings must have the index's dimension D=4"):
        index.add(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="ids must hold N=2 ids, got 3"):
        index.add(torch.zeros(2, 4), ids=torch.arange(3))
    with pytest.raises(ValueError, match="queries must have the index's dimension D=4"):
        index.search(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        index.search(torch.zeros(1, 4), k=0)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a saved GalleryIndex"):
        GalleryIndex.load(tmp_path / "other.pt")

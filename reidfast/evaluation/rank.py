"""CMC, mAP and mINP of a retrieval, exactly, without sorting gallery rows, in bounded memory.

Protocol (Market-1501, as torchreid and fast-reid implement it). For query q with identity p_q and
camera c_q, gallery entry g is

    junk        if p_g == p_q and c_g == c_q   (removed from q's ranking),
    a match     if p_g == p_q and c_g != c_q,
    a non-match otherwise.

The valid gallery of q is every entry but its junk, ordered by (distance ascending, gallery index
ascending): ties are broken by gallery index, as a stable argsort would. A query without a match is
skipped (and counted). With the k matches of q at ranks r_1 < ... < r_k (1-based, in the valid
gallery):

    CMC(r)   = fraction of valid queries with r_1 <= r                  (r = 1 .. max_rank)
    AP_plain = (1/k) sum_j j / r_j                                      (torchreid, fast-reid)
    AP_trap  = (1/k) sum_j (P(r_j - 1) + P(r_j)) / 2                    (the Market-1501 MATLAB code)
    INP      = k / r_k,             mAP, mINP = means over valid queries,

where P(n) is the precision of the first n valid entries, so P(r_j) = j / r_j and P(r_j - 1) =
(j - 1) / (r_j - 1), with P(0) = 1: the trapezoid rule on the precision-recall curve, each match
adding 1/k of recall at the mean of the precisions before and at it.

Algorithm. A query's metrics depend only on the ranks r_j. With key(g) = (distance, gallery
index) and the query's matches sorted into keys K_1 < ... < K_k,

    r_j = #{valid g : key(g) <= K_j}.

No gallery row is sorted. For a chunk of B queries:

1. The same-identity gallery entries of each query (matches and junk) come from the gallery sorted
   once by identity: a binary search per query, no [Q, G] identity comparison.
2. Every gallery entry's place among its query's match keys, p(g) = #{j : K_j < key(g)}, is counted
   in a histogram per query; summed cumulatively it gives #{g : key(g) <= K_j}, from which the
   junk's places are taken back out: r_j, the ranks of a stable argsort.

The counting is one op, reidfast::evaluate_rank_match_ranks, with two backends:

  cpu        the C++ kernel (csrc/cpu/evaluate_rank.cpp): one pass over each row; an entry's place
             comes from a coarse bucket of its distance (a table lookup) and exact comparisons with
             the few matches sharing its bucket. No per-entry memory.
  reference  plain PyTorch on any device (the GPU path): exact int64 keys (row, distance code,
             gallery index) for every entry, torch.searchsorted among the sorted match keys and
             torch.bincount. O(G log M) per query; about 64 bytes of working memory per element.

Neither depends on where the matches rank: a weak model's distances (an early epoch's, when
training evaluates) cost what a strong model's do. Distances are compared in their own dtype
(float16 ties stay ties; the kernel converts float16 and bfloat16 to float32, which is exact);
NaN distances raise ValueError. Memory: the distance matrix is read in place, a chunk of queries
at a time, each chunk's working memory within memory_budget (the reference's temporaries, or the
kernel's copy of a chunk it cannot read in place).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from reidfast import _extension
from reidfast._checks import check_int
from reidfast.backend import OpBackends
from reidfast.ops.distance import accumulation_dtype, distance_matrix

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_AP_DEFINITIONS = ("plain", "trapezoid")
_METRICS = ("euclidean", "cosine")
# Working memory per chunk, in bytes, when no chunk_size is given.
DEFAULT_MEMORY_BUDGET = 48 * 2**20
# Bytes of working memory per (query, gallery) element of a chunk on the reference backend: its
# int64 temporaries (distance codes, keys, places, histogram bins) and allocator slack (at
# Market-1501 size and the default budget, a measured peak of 31 MiB). The cpu backend's kernel
# needs none (see _bytes_per_element).
_REFERENCE_BYTES_PER_ELEMENT = 64
# Queries per chunk on the kernel, which needs no working memory: enough to spread over the
# threads and amortise a chunk's small tensor ops (the metrics of k_max ranks per query), few
# enough that those ops stay under ATen's parallel grain and run inline instead of waking the
# thread pool, which costs a scheduler time slice per op on a busy machine.
_KERNEL_CHUNK_ROWS = 512
# Working memory of `evaluate` by default: chunks of 50+ queries against an MSMT17-size gallery,
# enough for the matrix multiply to be bound by arithmetic, not by reading the gallery features
# once per chunk.
DEFAULT_FEATURES_MEMORY_BUDGET = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class RankMetrics:
    """Result of `evaluate_rank` and `evaluate` (numpy arrays on the host).

    cmc (ndarray[max_rank], float64): CMC(1 .. max_rank) over the valid queries.
    mAP, mINP (float): means of all_ap and all_inp over the valid queries.
    all_ap, all_inp (ndarray[Q], float64): each query's AP and INP; NaN for skipped queries.
    valid (ndarray[Q], bool): whether the query had a true match (was evaluated).
    num_valid_queries, num_skipped_queries (int).
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    all_ap: np.ndarray
    all_inp: np.ndarray
    valid: np.ndarray
    num_valid_queries: int
    num_skipped_queries: int


def evaluate_rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    ap: str = "plain",
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    backend: str | None = None,
) -> RankMetrics:
    """CMC, mAP and mINP of a query-gallery distance matrix (see the module docstring).

    Args:
        distmat (ndarray or Tensor[Q, G]): distances, smaller is closer; float16, bfloat16, float32
            or float64, on any device (the work runs there), compared in that dtype. No NaN.
        q_pids, q_camids (ndarray, Tensor or sequence [Q]), g_pids, g_camids ([G]): integer
            identities and cameras of the queries and the gallery.
        max_rank: length of the CMC curve; may exceed a query's valid gallery (the curve stays
            constant from that query's first match on).
        ap: "plain" (torchreid / fast-reid) or "trapezoid" (Market-1501 MATLAB code).
        chunk_size: queries evaluated at once; None picks the largest chunk whose working memory
            stays within memory_budget. The rows of distmat are read in place (a non-contiguous
            distmat is copied a chunk at a time).
        memory_budget: bytes of working memory: sizes the chunk unless chunk_size is given.
        backend: "cpu" (the C++ kernel, CPU tensors) or "reference" (plain PyTorch, any device);
            None: REIDFAST_BACKEND, else the fastest available (reidfast.backend).

    Returns:
        RankMetrics.

    Raises:
        ValueError: no query has a true match, distmat holds NaN, or an argument is malformed
            (each message names the argument and the value).
    """
    dist = _as_distance_matrix(distmat)
    num_q, num_g = dist.shape
    labels = _Labels(q_pids, g_pids, q_camids, g_camids, num_q, num_g, dist.device)
    _check_options(max_rank, ap, chunk_size, memory_budget)
    name = _KERNELS.choose(backend, dist)
    per_element = _bytes_per_element(name, dist.dtype, dist.is_contiguous())
    rows = chunk_size or _rows_per_chunk(num_g, per_element, memory_budget, name)
    same = _SameIdentity(labels)
    metrics = _Accumulator(num_q, max_rank, ap, dist.device)
    for start in range(0, num_q, rows):
        chunk = dist[start : start + rows]
        metrics.add(start, _match_ranks(chunk, same, start, name, "distmat"), same.counts[start : start + rows])
    return metrics.result()


def evaluate_rank_reference(
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, ap: str = "plain"
) -> RankMetrics:
    """The specification of `evaluate_rank`: per query, a stable argsort of the whole row, the
    junk removed, the matches' ranks read off. Same arguments (no chunking) and result; O(G log G)
    time per query. The baseline of the benchmarks."""
    dist = _as_distance_matrix(distmat)
    num_q, num_g = dist.shape
    labels = _Labels(q_pids, g_pids, q_camids, g_camids, num_q, num_g, dist.device)
    _check_options(max_rank, ap, None, 1)
    metrics = _Accumulator(num_q, max_rank, ap, dist.device)
    for q in range(num_q):
        _check_no_nan(torch.isnan(dist[q : q + 1]).any(1), dist[q : q + 1], q, "distmat")
        order = torch.sort(dist[q], stable=True).indices  # [G]
        same = labels.g_pids[order] == labels.q_pids[q]
        junk = same & (labels.g_camids[order] == labels.q_camids[q])
        ranks = (same & ~junk)[~junk].nonzero().squeeze(1) + 1  # [k] 1-based, in the valid gallery
        metrics.add(q, ranks[None], ranks.new_full((1,), ranks.shape[0]))
    return metrics.result()


def evaluate(
    query_features,
    gallery_features,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metric: str = "euclidean",
    max_rank: int = 50,
    ap: str = "plain",
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_FEATURES_MEMORY_BUDGET,
    backend: str | None = None,
) -> RankMetrics:
    """CMC, mAP and mINP from features: distances computed and evaluated chunk by chunk of queries.

    The [Q, G] distance matrix never exists at once: each chunk of B queries makes a [B, G] block
    (reidfast.ops.pairwise_distance's distances for "euclidean", 1 - cosine similarity for
    "cosine", in float32, float64 for float64 features), which `evaluate_rank`'s algorithm consumes
    before the next is made.

    Args:
        query_features (ndarray or Tensor[Q, D]), gallery_features (ndarray or Tensor[G, D]):
            float16, bfloat16, float32 or float64, on one device (the work runs there).
        q_pids, g_pids, q_camids, g_camids, max_rank, ap: as in `evaluate_rank`.
        metric: "euclidean", sqrt(clamp(|q|^2 + |g|^2 - 2 q.g, 1e-12)), or "cosine",
            1 - q.g / (|q| |g|) (zero vectors have norm clamped to 1e-12).
        chunk_size: queries per chunk; None picks it from memory_budget.
        memory_budget: bytes of working memory, the distance block included (as in
            `evaluate_rank`). The default, 256 MiB, keeps the matrix multiply efficient: each chunk
            reads the whole gallery's features once.
        backend: of the ranking, as in `evaluate_rank`.

    Returns:
        RankMetrics, equal to evaluate_rank on the full distance matrix up to the rounding of the
        matrix multiply (which may differ between chunk shapes).
    """
    queries = _as_tensor("query_features", query_features)
    gallery = _as_tensor("gallery_features", gallery_features)
    for name, value in (("query_features", queries), ("gallery_features", gallery)):
        if value.dim() != 2:
            raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(value.shape)}")
        if value.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if gallery.dtype != queries.dtype or gallery.device != queries.device:
        raise ValueError(
            f"gallery_features must have query_features' dtype and device ({queries.dtype}, {queries.device}), "
            f"got {gallery.dtype}, {gallery.device}"
        )
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(
            f"gallery_features must have query_features' dimension D={queries.shape[1]}, got shape "
            f"{tuple(gallery.shape)}"
        )
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    num_q, num_g = queries.shape[0], gallery.shape[0]
    labels = _Labels(q_pids, g_pids, q_camids, g_camids, num_q, num_g, queries.device)
    _check_options(max_rank, ap, chunk_size, memory_budget)
    name = _KERNELS.choose(backend, queries)
    # The ranking's memory, and the block's (contiguous, in the features' dtype).
    per_element = _bytes_per_element(name, queries.dtype, True) + queries.element_size()
    rows = chunk_size or _rows_per_chunk(num_g, per_element, memory_budget, name)
    same = _SameIdentity(labels)
    distances = _GalleryDistances(gallery, metric, rows, memory_budget)
    metrics = _Accumulator(num_q, max_rank, ap, queries.device)
    for start in range(0, num_q, rows):
        chunk = distances(queries[start : start + rows])
        source = "query_features and gallery_features"
        metrics.add(start, _match_ranks(chunk, same, start, name, source), same.counts[start : start + rows])
        del chunk
    return metrics.result()


class _GalleryDistances:
    """[B, G] distance blocks of query chunks against the gallery, made gallery block by gallery
    block so that the distance op's temporaries ([B, b] products, [b, D] squares) stay within a
    quarter of the memory budget."""

    def __init__(self, gallery: torch.Tensor, metric: str, rows: int, memory_budget: int):
        self.gallery, self.metric = gallery, metric
        self.block = max(1, memory_budget // (4 * 4 * (gallery.shape[1] + 3 * rows)))
        self.acc = accumulation_dtype(gallery.dtype)
        # Per gallery entry, computed once rather than once per query chunk (for MSMT17, 200 passes
        # over 670 MB of features saved): |g|^2 for "euclidean", 1 / |g| for "cosine".
        if metric == "euclidean":
            self.squared_norms = torch.cat([part.to(self.acc).pow(2).sum(1) for part in gallery.split(self.block)])
        else:
            self.inverse_norms = torch.cat([  # [G]
                1.0 / part.to(self.acc).norm(dim=1).clamp(min=1e-12) for part in gallery.split(self.block)
            ])

    def __call__(self, queries: torch.Tensor) -> torch.Tensor:
        out = queries.new_empty(queries.shape[0], self.gallery.shape[0])
        if self.metric == "cosine":
            queries = queries.to(self.acc)
            query_inverse_norms = 1.0 / queries.norm(dim=1).clamp(min=1e-12)  # [B]
        for first in range(0, self.gallery.shape[0], self.block):
            part = self.gallery[first : first + self.block]
            if self.metric == "euclidean":
                squared_norms = self.squared_norms[first : first + self.block]
                out[:, first : first + self.block] = distance_matrix(queries, part, False, squared_norms)
            else:
                # 1 - q.g / (|q| |g|): the products first, then the scaling, so that a chunk's rows
                # equal the full matrix's wherever the matrix multiply's rounding does not depend on
                # the chunk's shape.
                similarity = queries @ part.to(self.acc).t()  # [B, b]
                similarity *= query_inverse_norms[:, None]
                similarity *= self.inverse_norms[first : first + self.block]
                out[:, first : first + self.block] = 1.0 - similarity
        return out


class _Labels:
    """Identities and cameras on the evaluation device, and the gallery grouped by identity."""

    def __init__(self, q_pids, g_pids, q_camids, g_camids, num_q: int, num_g: int, device):
        self.q_pids = _as_labels("q_pids", q_pids, num_q, "Q", device)
        self.g_pids = _as_labels("g_pids", g_pids, num_g, "G", device)
        self.q_camids = _as_labels("q_camids", q_camids, num_q, "Q", device)
        self.g_camids = _as_labels("g_camids", g_camids, num_g, "G", device)
        # Gallery indices grouped by identity, ascending within each identity (stable sort).
        self.g_sorted_pids, self.g_order = torch.sort(self.g_pids, stable=True)


class _SameIdentity:
    """The gallery entries sharing each query's identity (matches and junk), for all queries at
    once (a few per query, so that each chunk only slices them): found by binary searches in the
    gallery grouped by identity, no [Q, G] comparison.

    offsets (Tensor[Q + 1], int64): query q's entries are cols[offsets[q] : offsets[q + 1]],
        gallery index ascending.
    cols (Tensor[S], int64), is_match (Tensor[S], bool): each entry's gallery index, and whether it
        is a match (another camera) rather than junk.
    counts (Tensor[Q], int64): each query's number of matches; k_max (int): their maximum.
    """

    def __init__(self, labels: _Labels):
        pids = labels.q_pids
        first = torch.searchsorted(labels.g_sorted_pids, pids)
        sizes = torch.searchsorted(labels.g_sorted_pids, pids, right=True) - first  # [Q]
        self.offsets = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
        rows = torch.repeat_interleave(torch.arange(pids.shape[0], device=pids.device), sizes)  # [S]
        within = torch.arange(rows.shape[0], device=pids.device) - self.offsets[rows]
        self.cols = labels.g_order[first[rows] + within]
        self.is_match = labels.g_camids[self.cols] != labels.q_camids[rows]
        self.counts = torch.bincount(rows[self.is_match], minlength=pids.shape[0])
        self.k_max = int(self.counts.max()) if pids.shape[0] else 0


def _match_ranks(dist: torch.Tensor, same: _SameIdentity, start: int, backend: str, source: str):
    """Ranks of every match of queries start .. start + B - 1 in its valid gallery, from their
    distances dist (Tensor[B, G]) on `backend`: Tensor[B, k_max] int64, r_1 < ... < r_k of each
    row in its first k columns (1 in the others). `source` names the distances in the NaN error."""
    offsets = same.offsets[start : start + dist.shape[0] + 1]
    if backend == "reference":
        ranks, nan_rows = match_ranks_reference(dist, offsets, same.cols, same.is_match, same.k_max)
    else:
        exact = dist.float() if dist.dtype in (torch.float16, torch.bfloat16) else dist  # exact: ties kept
        ranks, nan_rows = _KERNELS.kernels[backend](exact.contiguous(), offsets, same.cols, same.is_match, same.k_max)
    _check_no_nan(nan_rows, dist, start, source)
    return ranks


def match_ranks_reference(dist: torch.Tensor, same_offsets: torch.Tensor, same_cols: torch.Tensor,
                          same_is_match: torch.Tensor, max_matches: int):
    """The specification of the op reidfast::evaluate_rank_match_ranks, in plain PyTorch (any
    device): r_j = #{valid g : key(g) <= K_j} (module docstring), with every entry's place among
    its row's match keys found by torch.searchsorted.

    Args:
        dist (Tensor[B, G]): distances, any float dtype (compared in it).
        same_offsets (Tensor[B + 1], int64), same_cols (Tensor[S], int64), same_is_match
            (Tensor[S], bool): row b's same-identity gallery entries are same_cols[same_offsets[b]
            : same_offsets[b + 1]] (non-decreasing offsets within [0, S]), gallery index ascending,
            each a match where same_is_match, else junk.
        max_matches: at least every row's number of matches.

    Returns:
        ranks (Tensor[B, max_matches], int64): the 1-based ranks r_1 < ... < r_k of each row's k
            matches among its valid entries, then 1.
        nan_rows (Tensor[B], bool): the row holds a NaN (its ranks are then unspecified).
    """
    num_rows, num_g = dist.shape
    device = dist.device
    nan_rows = torch.isnan(dist).any(1)
    ranks = torch.ones(num_rows, max_matches, dtype=torch.int64, device=device)
    sizes = same_offsets[1:] - same_offsets[:-1]
    entries = slice(int(same_offsets[0]), int(same_offsets[-1]))  # this chunk's
    same_cols, same_is_match = same_cols[entries], same_is_match[entries]
    rows = torch.repeat_interleave(torch.arange(num_rows, device=device), sizes)  # [S]
    counts = torch.bincount(rows[same_is_match], minlength=num_rows)  # [B] k per row
    if max_matches == 0 or not bool((counts > 0).any()):
        return ranks, nan_rows
    match_rows, match_cols = rows[same_is_match], same_cols[same_is_match]
    match_values = dist[match_rows, match_cols]
    keys = _SortKeys(match_values, num_rows, num_g)
    match_keys = torch.sort(keys(match_rows, match_values, match_cols)).values  # [M], row by row
    row_first = torch.cumsum(counts, 0) - counts  # [B] each row's first match key
    slots = max_matches + 1  # places 0 .. max_matches of a row

    def bins(entry_rows, values, entry_cols):
        """row * slots + p(g), with p(g) = #{j : K_j < key(g)} among the row's match keys."""
        place = torch.searchsorted(match_keys, keys(entry_rows, values, entry_cols))
        return place.sub_(row_first[entry_rows]).add_(entry_rows * slots)

    every_row = torch.arange(num_rows, device=device)[:, None].expand(num_rows, num_g)  # [B, G]
    every_col = torch.arange(num_g, device=device)[None].expand(num_rows, num_g)
    histogram = torch.bincount(bins(every_row, dist.contiguous(), every_col).view(-1), minlength=num_rows * slots)
    junk = ~same_is_match
    junk_rows, junk_cols = rows[junk], same_cols[junk]
    histogram -= torch.bincount(bins(junk_rows, dist[junk_rows, junk_cols], junk_cols), minlength=num_rows * slots)
    at_or_before = histogram.view(num_rows, slots).cumsum(1)[:, :max_matches]  # [B, max_matches]
    live = torch.arange(max_matches, device=device) < counts[:, None]
    return torch.where(live, at_or_before, ranks), nan_rows


class _SortKeys:
    """int64 keys ordered as (row, distance, gallery index), for the distances of one chunk."""

    def __init__(self, match_values: torch.Tensor, num_rows: int, num_g: int):
        # A distance is coded by its place in U, the sorted distinct match distances of the chunk:
        # 2p if it lies strictly between U[p-1] and U[p], 2p + 1 if it equals U[p]. Coding
        # preserves order and equality in the input dtype.
        distinct = torch.unique(match_values)  # sorted
        self.distinct, self.num_g = distinct, num_g
        self.codes = 2 * distinct.shape[0] + 1  # codes 0 .. 2|U|
        if num_rows * self.codes * num_g >= 2**63:
            raise ValueError(f"chunk_size: a chunk of {num_rows} queries is too large for int64 keys")

    def __call__(self, rows: torch.Tensor, values: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        place = torch.searchsorted(self.distinct, values)
        equal = self.distinct[place.clamp(max=self.distinct.shape[0] - 1)] == values
        code = 2 * place + equal
        return (rows * self.codes + code) * self.num_g + cols


class _Accumulator:
    """Per-query AP and INP and the CMC histogram, gathered chunk by chunk (float64)."""

    def __init__(self, num_q: int, max_rank: int, ap: str, device):
        self.max_rank, self.ap = max_rank, ap
        self.all_ap = torch.full((num_q,), float("nan"), dtype=torch.float64, device=device)
        self.all_inp = torch.full_like(self.all_ap, float("nan"))
        self.first_rank_counts = torch.zeros(max_rank + 1, dtype=torch.int64, device=device)

    def add(self, start: int, ranks: torch.Tensor, counts: torch.Tensor) -> None:
        valid = counts > 0
        if not bool(valid.any()):
            return
        ranks, counts = ranks[valid].double(), counts[valid]
        k = counts.double()
        j = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64, device=ranks.device)
        live = j <= k[:, None]  # [V, k_max]: the columns that hold a match
        precision = j / ranks  # P(r_j) = j / r_j
        if self.ap == "trapezoid":
            before = torch.where(ranks > 1, (j - 1) / (ranks - 1).clamp(min=1), torch.ones_like(ranks))
            precision = (before + precision) / 2
        index = torch.arange(start, start + valid.shape[0], device=valid.device)[valid]
        self.all_ap[index] = torch.where(live, precision, torch.zeros_like(precision)).sum(1) / k
        self.all_inp[index] = k / ranks.gather(1, (counts - 1)[:, None]).squeeze(1)
        first = ranks[:, 0].long().clamp(max=self.max_rank + 1) - 1
        self.first_rank_counts += torch.bincount(first, minlength=self.max_rank + 1)

    def result(self) -> RankMetrics:
        all_ap, all_inp = self.all_ap.cpu().numpy(), self.all_inp.cpu().numpy()
        valid = ~np.isnan(all_ap)
        num_valid = int(valid.sum())
        if num_valid == 0:
            raise ValueError(
                "q_pids: no query has a true match (same identity, another camera) in the gallery"
            )
        cmc = np.cumsum(self.first_rank_counts.cpu().numpy()[: self.max_rank]) / num_valid
        return RankMetrics(
            cmc=cmc,
            mAP=float(all_ap[valid].mean()),
            mINP=float(all_inp[valid].mean()),
            all_ap=all_ap,
            all_inp=all_inp,
            valid=valid,
            num_valid_queries=num_valid,
            num_skipped_queries=int(valid.shape[0] - num_valid),
        )


def _rows_per_chunk(num_g: int, bytes_per_element: int, memory_budget: int, backend: str) -> int:
    """Rows whose working memory fits the budget, at most _KERNEL_CHUNK_ROWS on the kernel."""
    rows = max(1, memory_budget // max(bytes_per_element * num_g, 1))
    return rows if backend == "reference" else min(rows, _KERNEL_CHUNK_ROWS)


def _bytes_per_element(backend: str, dtype: torch.dtype, contiguous: bool) -> int:
    """Working memory per element of a chunk of distances: the reference's temporaries, or the
    copy the kernel needs of a chunk it cannot read in place (none for contiguous float32 or
    float64; a float32 copy of float16 and bfloat16)."""
    if backend == "reference":
        return _REFERENCE_BYTES_PER_ELEMENT
    if dtype in (torch.float16, torch.bfloat16):
        return 4
    return 0 if contiguous else dtype.itemsize


def _check_options(max_rank, ap, chunk_size, memory_budget) -> None:
    check_int("max_rank", max_rank, minimum=1)
    if ap not in _AP_DEFINITIONS:
        raise ValueError(f"ap must be one of {_AP_DEFINITIONS}, got {ap!r}")
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, minimum=1)
    check_int("memory_budget", memory_budget, minimum=1)


def _check_no_nan(nan_rows: torch.Tensor, dist: torch.Tensor, start: int, source: str) -> None:
    """Raises naming the first NaN distance of the rows flagged in nan_rows [B]."""
    rows = nan_rows.nonzero()
    if rows.shape[0]:
        row = int(rows[0, 0])
        col = int(torch.isnan(dist[row]).nonzero()[0, 0])
        raise ValueError(f"{source}: distance of query {start + row} to gallery entry {col} is NaN")


def _as_distance_matrix(distmat) -> torch.Tensor:
    """`distmat` as a Tensor[Q, G] of a float dtype, else a ValueError / TypeError naming it."""
    dist = _as_tensor("distmat", distmat)
    if dist.dim() != 2:
        raise ValueError(f"distmat must be 2-D [Q, G], got shape {tuple(dist.shape)}")
    if dist.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"distmat must be float16, bfloat16, float32 or float64, got {dist.dtype}")
    return dist


def _as_tensor(name: str, value) -> torch.Tensor:
    """A Tensor as it is, a numpy array as a Tensor sharing its memory."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        with warnings.catch_warnings():
            # A read-only array is fine: it is only read.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(value)
    raise TypeError(f"{name} must be a numpy array or a Tensor, got {type(value).__name__}")


def _as_labels(name: str, value, count: int, count_name: str, device) -> torch.Tensor:
    """Integer labels (a Tensor, a numpy array or a sequence) as int64 on `device`."""
    if not isinstance(value, (torch.Tensor, np.ndarray)):
        value = np.asarray(value)
    labels = _as_tensor(name, value)
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D [{count_name}], got shape {tuple(labels.shape)}")
    if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape[0] != count:
        raise ValueError(f"{name} must hold {count_name}={count} labels, got {labels.shape[0]}")
    return labels.to(device=device, dtype=torch.int64)


_KERNELS = OpBackends("evaluate_rank")

if _extension.LOAD_ERROR is None:

    @torch.library.register_fake("reidfast::evaluate_rank_match_ranks")
    def _match_ranks_fake(dist, same_offsets, same_cols, same_is_match, max_matches):
        return (dist.new_empty(dist.shape[0], max_matches, dtype=torch.int64),
                dist.new_empty(dist.shape[0], dtype=torch.bool))

    _KERNELS.add("cpu", torch.ops.reidfast.evaluate_rank_match_ranks.default)

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

Algorithm. A query's metrics depend only on the ranks r_j, and r_j = j + (number of valid
non-matches ordered before the j-th match). No gallery row is sorted; for a chunk of B queries:

1. The same-identity gallery entries of each query (matches and junk) come from the gallery sorted
   once by identity: a binary search per query, no [Q, G] identity comparison.
2. The matches get exact int64 sort keys (row, distance, gallery index) and are sorted: a few per
   query. A distance is coded by its place among the chunk's distinct match distances, so keys
   order and tie exactly as the distances do in their own dtype.
3. One comparison pass keeps the candidates: valid non-matches with distance <= the query's last
   match. Every other entry is ordered after all of the query's matches and changes no rank.
4. Counting. Each candidate gets a coarse bucket q(d) = trunc((d - row minimum) * scale), about
   one bucket per candidate of the row. The arithmetic is monotone and gives equal distances equal
   buckets, so a candidate in a lower bucket than a match is ordered before it and one in a higher
   bucket after it: a histogram of the buckets, summed cumulatively, counts them. The few
   candidates that share a bucket with a match are placed exactly by their sort keys (a binary
   search among the chunk's match keys), ties going to the lower gallery index.
5. r_j = j + the non-matches counted before the j-th match: the ranks of a stable argsort.

The work is two passes over the distances (row minimum, comparison) plus a few operations per
candidate. A model that ranks its matches early leaves few candidates; uninformative distances
leave nearly every entry a candidate, where the evaluator is still a few times faster than a
per-query sort. Memory: about 24 bytes per element of a chunk and 80 per candidate of a slice,
both sized from memory_budget; the distance matrix itself is read in place. Distances are compared
in their own dtype (float16 ties stay ties); NaN distances raise ValueError.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from reidfast.ops._checks import check_int
from reidfast.ops.triplet_select import _accumulation_dtype, _distance_matrix

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_AP_DEFINITIONS = ("plain", "trapezoid")
_METRICS = ("euclidean", "cosine")
# Working memory per chunk, in bytes, when no chunk_size is given.
DEFAULT_MEMORY_BUDGET = 48 * 2**20
# Bytes of working memory per (query, gallery) element of a chunk, at worst (every element a
# candidate): the candidate mask (1), the candidates' flat indices (8), the bucket histogram (8,
# about one bucket per candidate) and allocator slack; measured peaks stay within the budget.
_BYTES_PER_ELEMENT = 24
# Bytes per candidate of a slice: its row, distance, bucket and the temporaries of the bucket
# arithmetic and indexing. A chunk's candidates are processed in slices of this size.
_BYTES_PER_CANDIDATE = 80
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
        memory_budget: bytes of working memory: sizes the chunk (unless chunk_size is given) and
            the slices in which its candidates are processed.

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
    rows = chunk_size or _rows_per_chunk(num_g, _BYTES_PER_ELEMENT, memory_budget)
    metrics = _Accumulator(num_q, max_rank, ap, dist.device)
    for start in range(0, num_q, rows):
        chunk = dist[start : start + rows]
        metrics.add(start, *_match_ranks(chunk, labels, start, _slice_size(memory_budget), "distmat"))
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
        _check_no_nan(dist[q : q + 1].amin(1), dist[q : q + 1], q, "distmat")
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
    per_element = _BYTES_PER_ELEMENT + gallery.element_size()  # the ranking's, and the block
    rows = chunk_size or _rows_per_chunk(num_g, per_element, memory_budget)
    distances = _GalleryDistances(gallery, metric, rows, memory_budget)
    metrics = _Accumulator(num_q, max_rank, ap, queries.device)
    for start in range(0, num_q, rows):
        chunk = distances(queries[start : start + rows])
        source = "query_features and gallery_features"
        metrics.add(start, *_match_ranks(chunk, labels, start, _slice_size(memory_budget), source))
        del chunk
    return metrics.result()


class _GalleryDistances:
    """[B, G] distance blocks of query chunks against the gallery, made gallery block by gallery
    block so that the distance op's temporaries ([B, b] products, [b, D] squares) stay within a
    quarter of the memory budget."""

    def __init__(self, gallery: torch.Tensor, metric: str, rows: int, memory_budget: int):
        self.gallery, self.metric = gallery, metric
        self.block = max(1, memory_budget // (4 * 4 * (gallery.shape[1] + 3 * rows)))
        self.acc = _accumulation_dtype(gallery.dtype)
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
                out[:, first : first + self.block] = _distance_matrix(queries, part, False, squared_norms)
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

    def same_identity(self, start: int, count: int):
        """Gallery entries sharing each query's identity: (row in the chunk, gallery index, is a
        match), grouped by row, gallery index ascending within a row."""
        pids = self.q_pids[start : start + count]
        first = torch.searchsorted(self.g_sorted_pids, pids)
        sizes = torch.searchsorted(self.g_sorted_pids, pids, right=True) - first  # [B]
        ends = torch.cumsum(sizes, 0)
        total = int(ends[-1]) if count else 0
        rows = torch.searchsorted(ends, torch.arange(total, device=pids.device), right=True)  # [S]
        offsets = ends - sizes
        within = torch.arange(rows.shape[0], device=pids.device) - offsets[rows]
        cols = self.g_order[first[rows] + within]
        is_match = self.g_camids[cols] != self.q_camids[start + rows]
        return rows, cols, is_match


def _match_ranks(dist: torch.Tensor, labels: _Labels, start: int, slice_size: int, source: str):
    """Ranks of every query's matches in its valid gallery, for the queries of one chunk.

    Args:
        dist (Tensor[B, G]): distances of queries start .. start + B - 1.
        slice_size: candidates processed at once (bounds the per-candidate temporaries).
        source: what the distances come from, for the NaN error.

    Returns:
        ranks (Tensor[B, k_max], int64): r_1 < ... < r_k of each row in its first k columns (1
            in the others).
        counts (Tensor[B], int64): k, the number of matches of each query (0: skipped).
    """
    dist = dist.contiguous()
    num_rows, num_g = dist.shape
    device = dist.device
    low = dist.amin(1) if num_g else dist.new_zeros(num_rows)  # [B]; NaN where a row has NaN
    _check_no_nan(low, dist, start, source)
    rows, cols, is_match = labels.same_identity(start, num_rows)
    match_rows, match_cols = rows[is_match], cols[is_match]
    counts = torch.bincount(match_rows, minlength=num_rows)  # [B]
    k_max = int(counts.max()) if num_rows else 0
    if k_max == 0:
        return counts.new_ones(num_rows, 0), counts
    match_values = dist[match_rows, match_cols]
    keys = _SortKeys(match_values, num_rows, num_g)
    # The matches in (row, distance, gallery index) order; slot j - 1 holds a row's j-th match.
    match_keys, order = torch.sort(keys(match_rows, match_values, match_cols))  # [M]
    match_rows, match_values = match_rows[order], match_values[order]
    row_first = torch.cumsum(counts, 0) - counts  # [B] position of each row's first match
    slot = torch.arange(match_rows.shape[0], device=device) - row_first[match_rows]  # [M]
    last = match_values[(row_first + counts - 1).clamp(min=0)]  # [B] each row's last match
    last = torch.where(counts > 0, last, torch.full_like(last, float("-inf")))

    # Candidates: valid non-matches at or below the row's last match distance.
    candidate = dist <= last[:, None]
    candidate[rows, cols] = False  # the matches themselves and the junk
    flat = candidate.view(-1).nonzero().squeeze(1)  # [C] flat indices
    del candidate

    # Coarse buckets: q(d) = trunc((d - low) * scale) maps [row minimum, last match] onto
    # 0 .. n - 1 (n about the mean number of candidates per row). Each step is one correctly
    # rounded operation, so q is monotone in d and equal for equal distances: a candidate in a
    # lower bucket than a match is before it, in a higher one after it. Only the candidates that
    # share a bucket with a match ("ambiguous") need exact keys.
    n = flat.shape[0] // max(1, int((counts > 0).sum())) + 2
    low, scale = _bucket_map(low, last, n)
    match_bucket = _bucket(match_values, match_rows, low, scale, n)  # [M] row * n + q
    holds_match = torch.zeros(num_rows * n, dtype=torch.bool, device=device)
    holds_match[match_bucket] = True
    histogram = torch.zeros(num_rows * n, dtype=torch.int64, device=device)  # unambiguous only
    ambiguous = []  # (rows, distances, flat indices) of the ambiguous candidates, per slice
    for piece in flat.split(slice_size):
        piece_rows = torch.div(piece, num_g, rounding_mode="floor")
        piece_values = dist.view(-1)[piece]
        bucket = _bucket(piece_values, piece_rows, low, scale, n)
        shared = holds_match[bucket]
        unambiguous = bucket[~shared]
        histogram.index_add_(0, unambiguous, torch.ones_like(unambiguous))
        ambiguous.append((piece_rows[shared], piece_values[shared], piece[shared]))
    del flat
    at_or_below = histogram.view(num_rows, n).cumsum_(1).view(-1)  # in place: no second copy
    # [M] unambiguous candidates before each match: those of the buckets below the match's.
    before = torch.where(match_bucket % n > 0, at_or_below[(match_bucket - 1).clamp(min=0)], 0)

    # Ambiguous candidates: their exact place among the row's matches, from the sort keys.
    amb_rows, amb_values, amb_flat = (torch.cat(column) for column in zip(*ambiguous))
    amb_cols = amb_flat - amb_rows * num_g
    place = torch.searchsorted(match_keys, keys(amb_rows, amb_values, amb_cols)) - row_first[amb_rows]
    place_counts = torch.bincount(amb_rows * (k_max + 1) + place, minlength=num_rows * (k_max + 1))
    place_cumulative = place_counts.view(num_rows, k_max + 1).cumsum(1)
    before += place_cumulative[match_rows, slot]  # ambiguous candidates placed before the match

    ranks = torch.ones(num_rows, k_max, dtype=torch.int64, device=device)
    ranks[match_rows, slot] = before + slot + 1  # r_j = j + non-matches before the j-th match
    return ranks, counts


def _bucket_map(low: torch.Tensor, last: torch.Tensor, n: int):
    """Per row, low and scale with (d - low) * scale in [0, n - 1] for low <= d <= last, in
    float32 (float64 for float64 distances).

    Rows whose range is empty or not finite get scale 0: all their distances share bucket 0.
    """
    dtype = torch.float64 if low.dtype == torch.float64 else torch.float32
    low = low.to(dtype)
    scale = (n - 1) / (last.to(dtype) - low)
    usable = torch.isfinite(scale) & (scale > 0)
    return torch.where(usable, low, torch.zeros_like(low)), torch.where(usable, scale, torch.zeros_like(scale))


def _bucket(values: torch.Tensor, rows: torch.Tensor, low: torch.Tensor, scale: torch.Tensor, n: int):
    """Global bucket index row * n + q of each value (see _match_ranks)."""
    q = (values.to(low.dtype) - low[rows]) * scale[rows]
    q = torch.nan_to_num_(q, nan=0.0, posinf=n - 1, neginf=0.0).clamp_(0, n - 1).long()
    return torch.add(q, rows, alpha=n)


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


def _rows_per_chunk(num_g: int, bytes_per_element: int, memory_budget: int) -> int:
    """Half the budget for the chunk's per-element memory, half for its candidate slices."""
    return max(1, memory_budget // (2 * bytes_per_element * max(num_g, 1)))


def _slice_size(memory_budget: int) -> int:
    return max(1, memory_budget // (2 * _BYTES_PER_CANDIDATE))


def _check_options(max_rank, ap, chunk_size, memory_budget) -> None:
    check_int("max_rank", max_rank, minimum=1)
    if ap not in _AP_DEFINITIONS:
        raise ValueError(f"ap must be one of {_AP_DEFINITIONS}, got {ap!r}")
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, minimum=1)
    check_int("memory_budget", memory_budget, minimum=1)


def _check_no_nan(row_minimum: torch.Tensor, dist: torch.Tensor, start: int, source: str) -> None:
    """Raises naming the first NaN distance (a row's minimum is NaN where the row holds one)."""
    rows = torch.isnan(row_minimum).nonzero()
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

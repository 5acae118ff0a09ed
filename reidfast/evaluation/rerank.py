"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017) in torch, in blocks, on the GPU when there is one.

With the N = Q + G probes and gallery entries pooled, D = [[q_q, q_g], [q_g^T, g_g]] and

    O[i, j] = D[j, i]^2 / max_a D[a, i]^2                  (squared, each column scaled to max 1)

(for symmetric q_q and g_g, row i of D squared over its maximum), the steps of the paper, in the
form of the authors' widely used numpy code (which torchreid and fast-reid ship), are:

1. N(i, k): the k nearest entries of i by O[i, :] (i itself included). The k-reciprocal set is
   R(i, k) = {j in N(i, k + 1) : i in N(j, k + 1)}.
2. Expansion: R*(i) = R(i, k1) united with R(j, round(k1 / 2)) for every j in R(i, k1) whose
   half-size set overlaps R(i, k1) in more than 2/3 of its own elements.
3. Encoding: V[i, j] = exp(-O[i, j]) / sum_{j' in R*(i)} exp(-O[i, j']) for j in R*(i), else 0.
4. Local query expansion (k2 > 1): V[i] <- mean of V[j] over the k2 nearest j of i (N(i, k2)).
5. Jaccard distance: d_J(i, j) = 1 - sum_k min(V[i, k], V[j, k]) / sum_k max(V[i, k], V[j, k]),
   computed as 1 - m / (2 - m) with m the sum of minima (each V row sums to 1).
6. Final distance: d*(i, j) = (1 - lambda) d_J(i, j) + lambda O[i, j], for query i, gallery j.

Memory. The numpy code holds several dense N x N matrices (O, V, its expansion, the full argsort
of O), which for MSMT17 (N = 93,820) is over 100 GB. Here O is made and consumed in blocks of rows
(the k1 + 1 nearest kept per row: an N x (k1 + 1) table); V and its expansion are sparse (about
N x |R*| entries); the Jaccard step joins each query's entries with V's gallery columns, a block of
queries at a time. What stays O(N^2): the time to scan O, and the inputs q_q_dist and g_g_dist
themselves, which the interface hands over whole (the output is Q x G).

Ties. Neighbours at exactly equal distances are ordered as torch.topk orders them; the numpy code's
(unstable) argsort does not define that order either.
"""

from __future__ import annotations

import torch

from reidfast.evaluation.rank import _FLOAT_DTYPES, _as_tensor
from reidfast._checks import check_int

DEFAULT_MEMORY_BUDGET = 256 * 2**20
# Bytes per element of a block of O rows: the gathered distances, their float32 squares, the
# scaled copy, and torch.topk's working copy.
_ROW_BLOCK_BYTES = 24
# Bytes per expanded sparse entry (row, column, value and the index temporaries of the joins).
_ENTRY_BYTES = 48


def rerank(
    q_g_dist,
    q_q_dist,
    g_g_dist,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    device: str | torch.device | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
):
    """Re-ranked query-gallery distances (see the module docstring for the steps).

    Args:
        q_g_dist (ndarray or Tensor[Q, G]), q_q_dist ([Q, Q]), g_g_dist ([G, G]): distances
            (smaller is closer, typically Euclidean), float16, bfloat16, float32 or float64. They
            are read in blocks and may stay on the CPU while the work runs on a GPU.
        k1: size of the k-reciprocal neighbourhoods (>= 1).
        k2: size of the local query expansion (>= 1; 1 turns it off).
        lambda_value: weight of the original distance, in [0, 1].
        device: where the work runs; None: q_g_dist's device if it is a CUDA tensor, else CUDA
            when available, else the CPU.
        memory_budget: bytes of working memory per block (the sparse encodings come on top:
            about 12 bytes x N x |R*| for each).

    Returns:
        The [Q, G] re-ranked distances, float32: a numpy array for a numpy q_g_dist, else a
        Tensor on q_g_dist's device.
    """
    qg = _as_tensor("q_g_dist", q_g_dist)
    qq = _as_tensor("q_q_dist", q_q_dist)
    gg = _as_tensor("g_g_dist", g_g_dist)
    for name, value in (("q_g_dist", qg), ("q_q_dist", qq), ("g_g_dist", gg)):
        if value.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(value.shape)}")
        if value.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    num_q, num_g = qg.shape
    if tuple(qq.shape) != (num_q, num_q):
        raise ValueError(f"q_q_dist must be [Q, Q] = [{num_q}, {num_q}], got shape {tuple(qq.shape)}")
    if tuple(gg.shape) != (num_g, num_g):
        raise ValueError(f"g_g_dist must be [G, G] = [{num_g}, {num_g}], got shape {tuple(gg.shape)}")
    if num_q == 0 or num_g == 0:
        raise ValueError(f"q_g_dist must hold at least one query and one gallery entry, got shape {(num_q, num_g)}")
    check_int("k1", k1, minimum=1)
    check_int("k2", k2, minimum=1)
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float)) or not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value must be a float in [0, 1], got {lambda_value!r}")
    check_int("memory_budget", memory_budget, minimum=1)
    if device is None:
        device = qg.device if qg.is_cuda else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)

    pooled = _PooledDistances(qg, qq, gg, device)
    num = pooled.num
    neighbours, column_max = pooled.nearest(min(max(k1 + 1, k2), num), memory_budget)
    encoding = _encode(neighbours, column_max, pooled, k1, memory_budget)
    if k2 > 1:
        encoding = encoding.expanded(neighbours[:, : min(k2, num)], memory_budget)
    final = _final_distances(encoding, pooled, column_max, lambda_value, memory_budget)
    if isinstance(q_g_dist, torch.Tensor):
        return final.to(q_g_dist.device)
    return final.cpu().numpy()


class _PooledDistances:
    """The pooled matrix D = [[q_q, q_g], [q_g^T, g_g]], read by columns from the three inputs."""

    def __init__(self, qg, qq, gg, device):
        self.qg, self.qq, self.gg, self.device = qg, qq, gg, device
        self.num_q, self.num_g = qg.shape
        self.num = self.num_q + self.num_g

    def squared_columns(self, start: int, stop: int) -> torch.Tensor:
        """D[:, start:stop]^T squared: Tensor[stop - start, N], float32, on the device."""
        num_q, parts = self.num_q, []
        if start < num_q:
            a, b = start, min(stop, num_q)
            parts.append(torch.cat([self.qq[:, a:b].t(), self.qg[a:b]], 1))
        if stop > num_q:
            a, b = max(start, num_q) - num_q, stop - num_q
            parts.append(torch.cat([self.qg[:, a:b].t(), self.gg[:, a:b].t()], 1))
        return _square(torch.cat(parts, 0).to(self.device))

    def unscaled(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """D[j, i]^2 for index tensors i, j: O[i, j] before the scaling; float32, on the device."""
        num_q, source = self.num_q, self.qg.device
        rows, cols = j.to(source), i.to(source)  # D[rows, cols]
        values = torch.empty(rows.shape[0], dtype=self.qg.dtype, device=source)
        row_q, col_q = rows < num_q, cols < num_q
        for where, block, r, c in (
            (row_q & col_q, self.qq, rows, cols),
            (row_q & ~col_q, self.qg, rows, cols - num_q),
            (~row_q & col_q, self.qg, cols, rows - num_q),  # D[Q + g, q] = q_g[q, g]
            (~row_q & ~col_q, self.gg, rows - num_q, cols - num_q),
        ):
            index = where.nonzero().squeeze(1)
            values[index] = block[r[index], c[index]].to(values.dtype)
        return _square(values.to(self.device))

    def nearest(self, count: int, memory_budget: int):
        """For every row i of O: its `count` nearest entries (ascending), and max_a D[a, i]^2."""
        neighbours = torch.empty(self.num, count, dtype=torch.int64, device=self.device)
        column_max = torch.empty(self.num, dtype=torch.float32, device=self.device)
        step = max(1, memory_budget // (_ROW_BLOCK_BYTES * self.num))
        for start in range(0, self.num, step):
            stop = min(start + step, self.num)
            squares = self.squared_columns(start, stop)  # [b, N]
            column_max[start:stop] = squares.amax(1)
            scaled = squares / column_max[start:stop, None]
            neighbours[start:stop] = scaled.topk(count, dim=1, largest=False, sorted=True).indices
        return neighbours, column_max


def _square(values: torch.Tensor) -> torch.Tensor:
    """values^2 in float32; float64 is squared first, then rounded (as the numpy code does)."""
    if values.dtype == torch.float64:
        return (values * values).float()
    values = values.float()
    return values * values


def _reciprocal(nearest: torch.Tensor, step: int) -> torch.Tensor:
    """reciprocal[i, p]: i is among the nearest of its p-th nearest, for nearest [N, K]."""
    num, count = nearest.shape
    out = torch.empty(num, count, dtype=torch.bool, device=nearest.device)
    for start in range(0, num, step):
        block = nearest[start : start + step]  # [b, K]
        own = torch.arange(start, start + block.shape[0], device=nearest.device)
        out[start : start + step] = (nearest[block] == own[:, None, None]).any(-1)
    return out


class _Sparse:
    """A sparse N x N float32 matrix in compressed rows: entries sorted by (row, column)."""

    def __init__(self, rows, cols, values, num):
        self.rows, self.cols, self.values, self.num = rows, cols, values, num
        counts = torch.bincount(rows, minlength=num)
        self.pointers = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])  # [N + 1]

    def expanded(self, nearest: torch.Tensor, memory_budget: int) -> "_Sparse":
        """Local query expansion: row i becomes the mean of the rows nearest[i, :] (in order)."""
        parts = []
        lengths = (self.pointers[1:] - self.pointers[:-1])[nearest].sum(1)  # [N] entries gathered per row
        for start, stop in _blocks(lengths, memory_budget // _ENTRY_BYTES):
            sources = nearest[start:stop]  # [b, k2]
            targets = torch.arange(start, stop, device=sources.device)[:, None].expand_as(sources)
            pair, entry = _expand(self.pointers, sources.reshape(-1))
            rows, cols = targets.reshape(-1)[pair], self.cols[entry]
            keys, inverse = torch.unique(rows * self.num + cols, return_inverse=True)  # sorted
            sums = torch.zeros(keys.shape[0], dtype=self.values.dtype, device=keys.device)
            sums.index_add_(0, inverse, self.values[entry])  # in neighbour order, as the mean adds
            parts.append((torch.div(keys, self.num, rounding_mode="floor"), keys % self.num, sums / nearest.shape[1]))
        rows, cols, values = (torch.cat(column) for column in zip(*parts))
        return _Sparse(rows, cols, values, self.num)


def _expand(pointers: torch.Tensor, sources: torch.Tensor):
    """Every entry of the rows `sources` of a compressed-row structure: for each, the position of
    its source in `sources` (pair) and the entry's index (entry), in source order."""
    starts = pointers[sources]
    lengths = pointers[sources + 1] - starts
    ends = torch.cumsum(lengths, 0)
    total = int(ends[-1]) if ends.numel() else 0
    position = torch.arange(total, device=sources.device)
    pair = torch.searchsorted(ends, position, right=True)
    entry = starts[pair] + position - (ends - lengths)[pair]
    return pair, entry


def _blocks(costs: torch.Tensor, budget: int):
    """Consecutive [start, stop) ranges whose summed cost stays within budget (one row at least)."""
    cumulative = torch.cumsum(costs, 0).tolist()
    start, spent = 0, 0
    for index, total in enumerate(cumulative):
        if total - spent > budget and index > start:
            yield start, index
            start, spent = index, cumulative[index - 1]
    if start < len(cumulative):
        yield start, len(cumulative)


def _encode(neighbours, column_max, pooled: _PooledDistances, k1: int, memory_budget: int) -> _Sparse:
    """V of steps 1-3: the Gaussian-weighted expanded k-reciprocal sets, row-normalised."""
    num = pooled.num
    forward = neighbours[:, : min(k1 + 1, num)]  # N(i, k1 + 1)
    half = neighbours[:, : min(round(k1 / 2) + 1, num)]  # N(i, round(k1 / 2) + 1)
    k_forward, k_half = forward.shape[1], half.shape[1]
    # Rows per block so that the [b, K1, Kh, K1] comparison fits the budget.
    step = max(1, memory_budget // (8 * k_forward * k_half * k_forward))
    reciprocal = _reciprocal(forward, step)  # [N, K1]
    reciprocal_half = _reciprocal(half, step)  # [N, Kh]
    parts = []
    for start in range(0, num, step):
        candidates, is_reciprocal = forward[start : start + step], reciprocal[start : start + step]
        own_set = torch.where(is_reciprocal, candidates, torch.full_like(candidates, -1))  # R(i, k1)
        half_sets, half_member = half[candidates], reciprocal_half[candidates]  # [b, K1, Kh]
        shared = (half_sets[..., None] == own_set[:, None, None, :]).any(-1) & half_member
        # |R(j, k1/2) & R(i, k1)| > 2/3 |R(j, k1/2)|, in integers.
        qualifies = is_reciprocal & (3 * shared.sum(-1) > 2 * half_member.sum(-1))  # [b, K1]
        members = torch.cat([
            torch.where(is_reciprocal, candidates, num),
            torch.where(qualifies[..., None] & half_member, half_sets, num).flatten(1),
        ], 1).sort(1).values  # [b, K1 + K1 * Kh], absent entries as N at the end
        fresh = members != num
        fresh[:, 1:] &= members[:, 1:] != members[:, :-1]
        local, position = fresh.nonzero(as_tuple=True)
        rows, cols = local + start, members[local, position]
        scaled = pooled.unscaled(rows, cols) / column_max[rows]  # O[i, j]
        weights = torch.exp(-scaled)
        totals = torch.zeros(num, dtype=weights.dtype, device=weights.device).index_add_(0, rows, weights)
        parts.append((rows, cols, weights / totals[rows]))
    rows, cols, values = (torch.cat(column) for column in zip(*parts))
    return _Sparse(rows, cols, values, num)


def _final_distances(encoding: _Sparse, pooled: _PooledDistances, column_max, lambda_value, memory_budget):
    """Steps 5-6 for every query row against every gallery entry: Tensor[Q, G] float32."""
    num_q, num_g = pooled.num_q, pooled.num_g
    device = encoding.values.device
    # V's gallery rows by column: for column k, the gallery entries j with V[Q + j, k] != 0.
    gallery = encoding.rows >= num_q
    order = torch.argsort(encoding.cols[gallery] * num_g + (encoding.rows[gallery] - num_q))
    by_column = _Sparse(encoding.cols[gallery][order], encoding.rows[gallery][order] - num_q,
                        encoding.values[gallery][order], encoding.num)
    column_counts = by_column.pointers[1:] - by_column.pointers[:-1]  # [N]
    query_entries = int(encoding.pointers[num_q])
    per_query = torch.zeros(num_q, dtype=torch.int64, device=device).index_add_(
        0, encoding.rows[:query_entries], column_counts[encoding.cols[:query_entries]]
    )
    dense_rows = max(1, memory_budget // (16 * num_g))
    final = torch.empty(num_q, num_g, dtype=torch.float32, device=device)
    for start, stop in _blocks(per_query, memory_budget // _ENTRY_BYTES):
        for first in range(start, stop, dense_rows):
            last = min(first + dense_rows, stop)
            lo, hi = int(encoding.pointers[first]), int(encoding.pointers[last])
            # Each of these queries' entries (i, k, a) meets every gallery entry (j, k, b).
            pair, entry = _expand(by_column.pointers, encoding.cols[lo:hi])
            rows = encoding.rows[lo:hi][pair] - first
            minima = torch.minimum(encoding.values[lo:hi][pair], by_column.values[entry])
            overlap = torch.zeros((last - first) * num_g, dtype=torch.float32, device=device)
            overlap.index_add_(0, rows * num_g + by_column.cols[entry], minima)  # in k order, as numpy adds
            overlap = overlap.view(last - first, num_g)
            jaccard = 1 - overlap / (2 - overlap)
            original = _square(pooled.qg[first:last].to(device)) / column_max[first:last, None]  # O[i, Q + j]
            final[first:last] = jaccard * (1 - lambda_value) + original * lambda_value
    return final

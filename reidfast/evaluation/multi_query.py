"""Multi-query evaluation: each query's feature pooled with those of the same identity seen by the
same camera, as Market-1501's multiple-query protocol does (Zheng et al., "Scalable Person
Re-identification: A Benchmark", ICCV 2015, Sec. 5: "multiple queries", mean or max pooling of
the query images of one identity in one camera; the figures of the adaptive-margin paper,
arXiv:1707.00409, Table 4, are under it).

The pooled features then go to `evaluate` like single queries, so the protocol is as exact and as
chunked as the single-query path: pooling is one scatter over the images, O((Q + P) D) memory.
"""

from __future__ import annotations

import torch

from reidfast.evaluation.rank import _as_labels, _as_tensor

POOLS = ("mean", "max")


def pool_queries(
    query_features,
    q_pids,
    q_camids,
    pool_features=None,
    pool_pids=None,
    pool_camids=None,
    pool: str = "mean",
) -> torch.Tensor:
    """Each query's multi-query feature: the mean (or element-wise max) over its group, the
    images with its (identity, camera): the query images with that pair and, when given, the
    images of the pool set with that pair (Market-1501's gt_bbox/ hand-drawn boxes). A query's own
    image is always in its group; queries of one group get one feature.

    Args:
        query_features (ndarray or Tensor[Q, D]): float16, bfloat16, float32 or float64.
        q_pids, q_camids (Tensor[Q]): integer identities and cameras of the queries.
        pool_features (Tensor[P, D] or None): more images of the query identities, in the
            queries' dtype and device; pool_pids, pool_camids (Tensor[P]) their labels. Pool
            images whose (identity, camera) no query has are not used.
        pool: "mean" or "max".

    Returns:
        Tensor[Q, D] in the features' dtype and device, row i the pooled feature of query i.
    """
    queries = _as_tensor("query_features", query_features)
    if queries.dim() != 2:
        raise ValueError(f"query_features must be 2-D [Q, D], got shape {tuple(queries.shape)}")
    if not queries.is_floating_point():
        raise TypeError(f"query_features must be floating point, got {queries.dtype}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    num_q, device = queries.shape[0], queries.device
    pids = _as_labels("q_pids", q_pids, num_q, "Q", device)
    camids = _as_labels("q_camids", q_camids, num_q, "Q", device)
    features = queries
    given = [value is not None for value in (pool_features, pool_pids, pool_camids)]
    if any(given) and not all(given):
        raise ValueError("pool_features, pool_pids and pool_camids must be given together, or none of them")
    if all(given):
        extra = _as_tensor("pool_features", pool_features)
        if extra.dim() != 2 or extra.shape[1] != queries.shape[1]:
            raise ValueError(
                f"pool_features must be 2-D [P, D={queries.shape[1]}], got shape {tuple(extra.shape)}"
            )
        if extra.dtype != queries.dtype or extra.device != device:
            raise ValueError(
                f"pool_features must have query_features' dtype and device ({queries.dtype}, {device}), "
                f"got {extra.dtype}, {extra.device}"
            )
        num_p = extra.shape[0]
        features = torch.cat([queries, extra])
        pids = torch.cat([pids, _as_labels("pool_pids", pool_pids, num_p, "P", device)])
        camids = torch.cat([camids, _as_labels("pool_camids", pool_camids, num_p, "P", device)])
    keys = torch.stack([pids, camids], dim=1)
    groups, group_of = torch.unique(keys, dim=0, return_inverse=True)
    accumulate = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    pooled = accumulate.new_zeros(groups.shape[0], accumulate.shape[1])
    index = group_of.unsqueeze(1).expand_as(accumulate)
    reduce = "mean" if pool == "mean" else "amax"
    pooled.scatter_reduce_(0, index, accumulate, reduce=reduce, include_self=False)
    return pooled[group_of[:num_q]].to(queries.dtype)

"""Retrieval evaluation: CMC, mAP and mINP computed exactly without sorting gallery rows, from a
distance matrix or chunk by chunk from features; multi-query pooling; k-reciprocal re-ranking;
ranked-result sheets."""

from reidfast.evaluation.multi_query import pool_queries
from reidfast.evaluation.plot import plot_ranked_results
from reidfast.evaluation.rank import RankMetrics, evaluate, evaluate_rank, evaluate_rank_reference
from reidfast.evaluation.rerank import rerank

__all__ = [
    "RankMetrics",
    "evaluate",
    "evaluate_rank",
    "evaluate_rank_reference",
    "plot_ranked_results",
    "pool_queries",
    "rerank",
]

"""Retrieval evaluation: CMC, mAP and mINP computed exactly without sorting gallery rows, from a
distance matrix or chunk by chunk from features; multi-query pooling; k-reciprocal re-ranking;
ranked-result sheets; PLA's test-time 10-crop averaging and PCA."""

from reidfast.evaluation.multi_query import pool_queries
from reidfast.evaluation.plot import plot_ranked_results
from reidfast.evaluation.rank import RankMetrics, evaluate, evaluate_rank, evaluate_rank_reference
from reidfast.evaluation.rerank import rerank
from reidfast.evaluation.test_time import PCA, fit_pca, ten_crop_features

__all__ = [
    "PCA",
    "RankMetrics",
    "evaluate",
    "evaluate_rank",
    "evaluate_rank_reference",
    "fit_pca",
    "plot_ranked_results",
    "pool_queries",
    "rerank",
    "ten_crop_features",
]

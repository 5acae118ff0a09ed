"""Multi-query pooling: each query's feature pooled over the images of its (identity, camera),
worked by hand, and its evaluation through `evaluate`."""

import pytest
import torch

from reidfast.evaluation import evaluate, pool_queries


def test_pooling_by_identity_and_camera_worked_by_hand():
    features = torch.tensor([[1.0, 0.0], [3.0, 4.0], [5.0, -2.0], [0.0, 1.0]])
    pids, camids = torch.tensor([7, 7, 7, 9]), torch.tensor([0, 0, 1, 0])
    # Queries 0 and 1 share (7, camera 0); query 2 is (7, camera 1) alone; query 3 alone.
    assert torch.equal(pool_queries(features, pids, camids), torch.tensor(
        [[2.0, 2.0], [2.0, 2.0], [5.0, -2.0], [0.0, 1.0]]))
    assert torch.equal(pool_queries(features, pids, camids, pool="max"), torch.tensor(
        [[3.0, 4.0], [3.0, 4.0], [5.0, -2.0], [0.0, 1.0]]))
    # A pool set (gt_bbox): its (7, 1) image joins query 2, its (8, 0) image joins nobody.
    extra = torch.tensor([[1.0, 2.0], [100.0, 100.0]])
    pooled = pool_queries(features, pids, camids, extra, torch.tensor([7, 8]), torch.tensor([1, 0]))
    assert torch.equal(pooled, torch.tensor([[2.0, 2.0], [2.0, 2.0], [3.0, 0.0], [0.0, 1.0]]))


def test_low_precision_pools_in_float32_and_keeps_the_dtype():
    features = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.bfloat16)
    pooled = pool_queries(features, torch.tensor([1, 1]), torch.tensor([0, 0]))
    assert pooled.dtype == torch.bfloat16 and torch.equal(pooled.float(), torch.tensor([[1.5, 3.0], [1.5, 3.0]]))


def test_pooled_queries_evaluate_like_single_queries():
    # Two noisy views of identity 1 in camera 0: alone, query 0 ranks the wrong gallery image
    # first; pooled with query 1, the true match comes first.
    queries = torch.tensor([[0.0, 1.2], [2.0, 0.0]])
    gallery = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    q_pids, q_camids = torch.tensor([1, 1]), torch.tensor([0, 0])
    g_pids, g_camids = torch.tensor([2, 1]), torch.tensor([1, 1])
    single = evaluate(queries, gallery, q_pids, g_pids, q_camids, g_camids, max_rank=2)
    pooled = evaluate(pool_queries(queries, q_pids, q_camids), gallery, q_pids, g_pids, q_camids, g_camids,
                      max_rank=2)
    assert single.cmc[0] == 0.5 and pooled.cmc[0] == 1.0


@pytest.mark.parametrize("call, error, message", [
    (lambda f: pool_queries(f, [1, 1], [0, 0], pool="median"), ValueError, "pool must be one of"),
    (lambda f: pool_queries(f[0], [1], [0]), ValueError, r"query_features must be 2-D"),
    (lambda f: pool_queries(f.long(), [1, 1], [0, 0]), TypeError, "must be floating point"),
    (lambda f: pool_queries(f, [1], [0, 0]), ValueError, "q_pids must hold Q=2 labels"),
    (lambda f: pool_queries(f, [1, 1], [0, 0], f), ValueError, "must be given together"),
    (lambda f: pool_queries(f, [1, 1], [0, 0], f[:, :1], [1, 1], [0, 0]), ValueError, r"\[P, D=2\]"),
    (lambda f: pool_queries(f, [1, 1], [0, 0], f.double(), [1, 1], [0, 0]), ValueError, "dtype and device"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.ones(2, 2))

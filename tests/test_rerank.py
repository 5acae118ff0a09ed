"""rerank against a direct numpy transcription of the k-reciprocal algorithm (dense matrices,
per-row loops, in the order the authors' numpy code runs its steps), on small random inputs; the
block and budget paths; numpy and torch inputs; each error."""

import numpy as np
import pytest
import torch

from reidfast.evaluation import rerank


def numpy_rerank(q_g, q_q, g_g, k1, k2, lambda_value):
    """k-reciprocal re-ranking with dense N x N matrices, step by step (see rerank's docstring)."""
    num_q = q_g.shape[0]
    pooled = np.block([[q_q, q_g], [q_g.T, g_g]])
    pooled = np.power(pooled, 2).astype(np.float32)
    original = np.transpose(pooled / np.max(pooled, axis=0))  # O
    num = original.shape[0]
    ranking = np.argsort(original, axis=1, kind="stable")
    encoding = np.zeros_like(original, dtype=np.float32)

    def reciprocal(i, k):
        forward = ranking[i, : k + 1]
        return np.array([j for j in forward if i in ranking[j, : k + 1]], dtype=np.int64)

    half = int(np.around(k1 / 2.0))
    for i in range(num):
        own = reciprocal(i, k1)
        expansion = own
        for j in own:
            theirs = reciprocal(j, half)
            if len(np.intersect1d(theirs, own)) > 2.0 / 3 * len(theirs):
                expansion = np.append(expansion, theirs)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        encoding[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        expanded = np.zeros_like(encoding)
        for i in range(num):
            expanded[i] = np.mean(encoding[ranking[i, :k2]], axis=0)
        encoding = expanded
    jaccard = np.zeros((num_q, num), dtype=np.float32)
    for i in range(num_q):
        minima = np.zeros(num, dtype=np.float32)
        for k in np.flatnonzero(encoding[i]):
            holders = np.flatnonzero(encoding[:, k])
            minima[holders] += np.minimum(encoding[i, k], encoding[holders, k])
        jaccard[i] = 1 - minima / (2.0 - minima)
    final = jaccard * (1 - lambda_value) + original[:num_q] * lambda_value
    return final[:, num_q:]


def distances(num_q, num_g, dim, seed, identities=6):
    """Euclidean distances of clustered random features: every block and its transpose."""
    generator = np.random.default_rng(seed)
    centres = generator.normal(size=(identities, dim))
    q = centres[generator.integers(0, identities, num_q)] + 0.7 * generator.normal(size=(num_q, dim))
    g = centres[generator.integers(0, identities, num_g)] + 0.7 * generator.normal(size=(num_g, dim))

    def euclidean(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).astype(np.float32)

    return euclidean(q, g), euclidean(q, q), euclidean(g, g)


@pytest.mark.parametrize("num_q, num_g, k1, k2, lambda_value", [
    (5, 30, 20, 6, 0.3),  # the defaults, with k1 + 1 close to N
    (12, 47, 6, 3, 0.3),
    (9, 60, 5, 1, 0.5),  # odd k1: round(5 / 2) = 2 (half to even, as np.around); no query expansion
    (1, 8, 20, 6, 0.0),  # k1 + 1 beyond N, pure Jaccard distance
    (20, 25, 4, 2, 1.0),  # lambda 1: the scaled original distance
])
def test_matches_numpy_transcription(num_q, num_g, k1, k2, lambda_value):
    q_g, q_q, g_g = distances(num_q, num_g, 16, seed=num_q * 100 + num_g)
    expected = numpy_rerank(q_g, q_q, g_g, k1, k2, lambda_value)
    got = rerank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (num_q, num_g)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_asymmetric_blocks_follow_the_column_convention():
    """O is D's columns scaled: with non-symmetric q_q and g_g the rows of D would differ."""
    q_g, q_q, g_g = distances(7, 20, 8, seed=3)
    generator = np.random.default_rng(4)
    q_q = (q_q * generator.uniform(0.8, 1.2, q_q.shape)).astype(np.float32)
    g_g = (g_g * generator.uniform(0.8, 1.2, g_g.shape)).astype(np.float32)
    expected = numpy_rerank(q_g, q_q, g_g, 5, 3, 0.3)
    np.testing.assert_allclose(rerank(q_g, q_q, g_g, k1=5, k2=3), expected, rtol=1e-5, atol=1e-5)


def test_tiny_memory_budget_gives_the_same_result():
    """Blocks of one row everywhere: every block boundary is crossed."""
    q_g, q_q, g_g = distances(11, 37, 8, seed=5)
    whole = rerank(q_g, q_q, g_g, k1=6, k2=3)
    blocked = rerank(q_g, q_q, g_g, k1=6, k2=3, memory_budget=1)
    np.testing.assert_array_equal(blocked, whole)


def test_torch_and_float64_inputs():
    q_g, q_q, g_g = distances(6, 25, 8, seed=6)
    expected = numpy_rerank(q_g.astype(np.float64), q_q.astype(np.float64), g_g.astype(np.float64), 5, 3, 0.3)
    got = rerank(*(torch.from_numpy(d.astype(np.float64)) for d in (q_g, q_q, g_g)), k1=5, k2=3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    q_g, q_q, g_g = distances(10, 50, 8, seed=7)
    cpu = rerank(q_g, q_q, g_g, k1=8, k2=4, device="cpu")
    cuda = rerank(*(torch.from_numpy(d).cuda() for d in (q_g, q_q, g_g)), k1=8, k2=4)
    assert cuda.is_cuda
    np.testing.assert_allclose(cuda.cpu().numpy(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, error, message", [
    (dict(q_g_dist=np.zeros((3, 4, 1), np.float32)), ValueError, "q_g_dist must be 2-D"),
    (dict(q_q_dist=np.zeros((2, 2), np.float32)), ValueError, r"q_q_dist must be \[Q, Q\] = \[3, 3\]"),
    (dict(g_g_dist=np.zeros((4, 5), np.float32)), ValueError, r"g_g_dist must be \[G, G\] = \[4, 4\]"),
    (dict(g_g_dist=np.zeros((4, 4), np.int64)), TypeError, "g_g_dist must be float16"),
    (dict(q_g_dist=[[0.0]]), TypeError, "q_g_dist must be a numpy array or a Tensor, got list"),
    (dict(k1=0), ValueError, "k1 must be >= 1, got 0"),
    (dict(k2=2.0), TypeError, "k2 must be an int, got float 2.0"),
    (dict(lambda_value=1.5), ValueError, r"lambda_value must be a float in \[0, 1\], got 1.5"),
])
def test_errors(change, error, message):
    arguments = dict(
        q_g_dist=np.ones((3, 4), np.float32), q_q_dist=np.ones((3, 3), np.float32),
        g_g_dist=np.ones((4, 4), np.float32),
    )
    arguments.update(change)
    with pytest.raises(error, match=message):
        rerank(**arguments)

"""evaluate_rank and evaluate: hand-worked cases, a per-query stable-argsort implementation on
fresh random inputs (ties, skipped queries, junk cameras, max_rank beyond the gallery, both AP
definitions, every dtype, numpy and torch inputs, any chunking) on every backend, the C++ kernel of
the ranking op against its plain-PyTorch reference (ties, signed zeros, infinities, degenerate
rows), features against distances, the GPU against the CPU, and each error."""

import numpy as np
import pytest
import torch

import reidfast
from reidfast.evaluation import evaluate, evaluate_rank, evaluate_rank_reference
from reidfast.evaluation.rank import _GalleryDistances, match_ranks_reference
from reidfast.ops import pairwise_distance

# Backends of evaluate_rank on CPU tensors: the C++ kernel where the extension is built, and the
# plain-PyTorch counting (the GPU path) always.
CPU_BACKENDS = [name for name in ("cpu", "reference") if reidfast.available_backends()[name].available]
needs_kernel = pytest.mark.skipif(not reidfast.available_backends()["cpu"].available,
                                  reason="the extension is not built")


def argsort_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, ap):
    """The protocol written plainly: per query, a stable argsort of its row, its junk removed,
    the ranks of its matches read off. Returns (cmc, all_ap, all_inp) with NaN for skipped
    queries."""
    distmat = np.asarray(torch.as_tensor(distmat).float().cpu() if isinstance(distmat, torch.Tensor) else distmat)
    num_q = distmat.shape[0]
    first_ranks, all_ap, all_inp = [], np.full(num_q, np.nan), np.full(num_q, np.nan)
    for q in range(num_q):
        order = np.argsort(distmat[q], kind="stable")
        same = g_pids[order] == q_pids[q]
        junk = same & (g_camids[order] == q_camids[q])
        is_match = (same & ~junk)[~junk]
        if not is_match.any():
            continue
        ranks = np.flatnonzero(is_match) + 1  # r_1 < ... < r_k
        j = np.arange(1, len(ranks) + 1)
        precision = j / ranks
        if ap == "trapezoid":
            precision_before = np.where(ranks > 1, (j - 1) / np.maximum(ranks - 1, 1), 1.0)
            precision = (precision_before + precision) / 2
        all_ap[q] = precision.mean()
        all_inp[q] = len(ranks) / ranks[-1]
        first_ranks.append(ranks[0])
    first_ranks = np.array(first_ranks)
    cmc = np.array([(first_ranks <= r).sum() / max(1, len(first_ranks)) for r in range(1, max_rank + 1)])
    return cmc, all_ap, all_inp


def assert_same_evaluation(result, expected):
    cmc, all_ap, all_inp = expected
    np.testing.assert_array_equal(result.cmc, cmc)  # ranks exact: counts of first matches
    np.testing.assert_array_equal(result.all_inp, all_inp)  # k / r_k: exact ranks of last matches
    np.testing.assert_allclose(result.all_ap, all_ap, rtol=1e-12, atol=0)  # every rank, summed
    valid = ~np.isnan(all_ap)
    np.testing.assert_array_equal(result.valid, valid)
    assert result.num_valid_queries == valid.sum() and result.num_skipped_queries == (~valid).sum()
    assert result.mAP == pytest.approx(all_ap[valid].mean(), rel=1e-12)
    assert result.mINP == pytest.approx(all_inp[valid].mean(), rel=1e-12)


# A gallery of five and four queries, worked by hand:
#   gallery  0: pid 2 cam 0   1: pid 1 cam 1   2: pid 1 cam 2   3: pid 3 cam 1   4: pid 1 cam 1
#   q0 pid 1 cam 0, distances 0.5 0.5 0.5 0.5 0.2: order 4, then the tie at 0.5 by index 0 1 2 3;
#      matches 4, 1, 2 at ranks 1, 3, 4.
#      plain AP = (1/1 + 2/3 + 3/4) / 3 = 29/36; INP = 3/4.
#      trapezoid AP = ((1 + 1)/2 + (1/2 + 2/3)/2 + (2/3 + 3/4)/2) / 3 = 55/72.
#   q1 pid 9: no match, skipped.
#   q2 pid 2 cam 0: its only same-identity entry (0) is on its camera: junk; skipped.
#   q3 pid 3 cam 0, distances 0.9 0.1 0.3 0.7 0.2: order 1 4 2 3 0; match 3 at rank 4.
#      plain AP = 1/4; INP = 1/4; trapezoid AP = (0/3 + 1/4)/2 = 1/8.
HAND_DISTMAT = np.array([
    [0.5, 0.5, 0.5, 0.5, 0.2],
    [0.1, 0.2, 0.3, 0.4, 0.5],
    [0.3, 0.2, 0.1, 0.4, 0.5],
    [0.9, 0.1, 0.3, 0.7, 0.2],
], dtype=np.float32)
HAND_LABELS = dict(
    q_pids=np.array([1, 9, 2, 3]), g_pids=np.array([2, 1, 1, 3, 1]),
    q_camids=np.array([0, 0, 0, 0]), g_camids=np.array([0, 1, 2, 1, 1]),
)


@pytest.mark.parametrize("ap, expected_ap", [
    ("plain", [29 / 36, np.nan, np.nan, 1 / 4]),
    ("trapezoid", [55 / 72, np.nan, np.nan, 1 / 8]),
])
def test_hand_worked(ap, expected_ap):
    result = evaluate_rank(HAND_DISTMAT, max_rank=10, ap=ap, **HAND_LABELS)  # max_rank > G
    np.testing.assert_allclose(result.all_ap, expected_ap, rtol=1e-15)
    np.testing.assert_allclose(result.all_inp, [3 / 4, np.nan, np.nan, 1 / 4], rtol=1e-15)
    np.testing.assert_array_equal(result.cmc, [0.5, 0.5, 0.5] + [1.0] * 7)
    assert result.mAP == pytest.approx(np.nanmean(expected_ap), rel=1e-15)
    assert result.mINP == pytest.approx(0.5, rel=1e-15)
    assert (result.num_valid_queries, result.num_skipped_queries) == (2, 2)
    np.testing.assert_array_equal(result.valid, [True, False, False, True])


def test_hand_worked_junk_before_matches():
    """One query, pid 1 cam 0: the junk entry 0 (nearest) is removed before ranking; matches 2
    and 4 land at ranks 2 and 4: plain AP (1/2 + 2/4)/2 = 1/2, trapezoid ((0 + 1/2)/2 +
    (1/3 + 1/2)/2)/2 = 1/3, INP 2/4."""
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    labels = dict(q_pids=[1], g_pids=[1, 2, 1, 3, 1, 2], q_camids=[0], g_camids=[0, 1, 1, 0, 2, 2])
    labels = {name: np.array(value) for name, value in labels.items()}
    plain = evaluate_rank(distmat, max_rank=3, **labels)
    trapezoid = evaluate_rank(distmat, max_rank=3, ap="trapezoid", **labels)
    assert plain.mAP == pytest.approx(1 / 2) and trapezoid.mAP == pytest.approx(1 / 3)
    assert plain.mINP == pytest.approx(1 / 2)
    np.testing.assert_array_equal(plain.cmc, [0, 1, 1])


def random_case(generator, num_q, num_g, identities, cameras, values):
    """Labels with skipped queries (identities absent from the gallery, or only on the query's
    camera) and distances: continuous, a few integer levels (many ties), or with infinities."""
    q_pids = generator.integers(0, identities + 2, num_q)  # identities + 1 and + 2: no gallery entry
    g_pids = generator.integers(0, identities, num_g)
    q_camids = generator.integers(0, cameras, num_q)
    g_camids = generator.integers(0, cameras, num_g)
    if values == "ties":
        distmat = generator.integers(0, 4, (num_q, num_g)).astype(np.float32)
    else:
        distmat = generator.normal(size=(num_q, num_g)).astype(np.float32)  # negative ones too
        if values == "infinite":
            distmat[generator.random((num_q, num_g)) < 0.2] = np.inf
            distmat[generator.random((num_q, num_g)) < 0.05] = -np.inf
    return distmat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("values", ["continuous", "ties", "infinite"])
@pytest.mark.parametrize("ap", ["plain", "trapezoid"])
def test_against_argsort_on_random_inputs(values, ap, backend):
    generator = np.random.default_rng([["continuous", "ties", "infinite"].index(values), ap == "trapezoid"])
    for _ in range(25):
        num_q, num_g = int(generator.integers(1, 40)), int(generator.integers(1, 120))
        identities, cameras = int(generator.integers(1, 12)), int(generator.integers(1, 4))
        case = random_case(generator, num_q, num_g, identities, cameras, values)
        max_rank = int(generator.integers(1, 2 * num_g + 2))  # often beyond the gallery
        expected = argsort_evaluate(*case, max_rank, ap)
        if np.isnan(expected[1]).all():
            continue
        chunk_size = [None, 1, int(generator.integers(1, num_q + 1))][int(generator.integers(0, 3))]
        result = evaluate_rank(*case, max_rank=max_rank, ap=ap, chunk_size=chunk_size, backend=backend)
        assert_same_evaluation(result, expected)


@pytest.mark.parametrize("values", ["ties", "infinite"])
@pytest.mark.parametrize("ap", ["plain", "trapezoid"])
def test_reference_against_argsort(values, ap):
    """evaluate_rank_reference, the benchmarks' baseline, computes the same protocol."""
    generator = np.random.default_rng([["ties", "infinite"].index(values), ap == "trapezoid", 9])
    case = random_case(generator, 20, 80, 6, 3, values)
    assert_same_evaluation(evaluate_rank_reference(*case, max_rank=100, ap=ap), argsort_evaluate(*case, 100, ap))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_compare_in_their_own_precision(dtype, backend):
    """Distances that differ in float32 but round to ties in float16 / bfloat16 rank as ties."""
    generator = np.random.default_rng(1)
    distmat, *labels = random_case(generator, 30, 200, 8, 3, "continuous")
    distmat = torch.from_numpy(distmat).to(dtype)
    expected = argsort_evaluate(distmat, *labels, 20, "plain")  # on the float32 image of the dtype
    assert_same_evaluation(evaluate_rank(distmat, *labels, max_rank=20, chunk_size=7, backend=backend), expected)


def test_numpy_and_torch_inputs_agree():
    generator = np.random.default_rng(2)
    distmat, *labels = random_case(generator, 25, 90, 6, 3, "ties")
    from_numpy = evaluate_rank(distmat, *labels)
    from_torch = evaluate_rank(torch.from_numpy(distmat), *(torch.from_numpy(x).int() for x in labels))
    np.testing.assert_array_equal(from_numpy.all_ap, from_torch.all_ap)
    np.testing.assert_array_equal(from_numpy.cmc, from_torch.cmc)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_realistic_structure_against_argsort(backend):
    """Market-like labels (one gallery image in five a distractor, 6 cameras) and informative
    distances, with a budget small enough to force many chunks of a non-contiguous distmat."""
    generator = torch.Generator().manual_seed(3)
    num_q, num_g, identities = 300, 2500, 120
    centres = torch.randn(identities + num_g // 5, 32, generator=generator)
    g_pids = torch.cat([torch.randint(0, identities, (num_g - num_g // 5,), generator=generator),
                        torch.arange(identities, identities + num_g // 5)])
    q_pids = torch.randint(0, identities, (num_q,), generator=generator)
    g_camids = torch.randint(0, 6, (num_g,), generator=generator)
    q_camids = torch.randint(0, 6, (num_q,), generator=generator)
    gallery = centres[g_pids] + torch.randn(num_g, 32, generator=generator)
    queries = centres[q_pids] + torch.randn(num_q, 32, generator=generator)
    distmat = pairwise_distance(queries, gallery)
    labels = [x.numpy() for x in (q_pids, g_pids, q_camids, g_camids)]
    expected = argsort_evaluate(distmat.numpy(), *labels, 50, "plain")
    assert_same_evaluation(evaluate_rank(distmat, *labels, backend=backend), expected)
    transposed = pairwise_distance(gallery, queries).t()  # [Q, G], column-major
    assert not transposed.is_contiguous()
    expected = argsort_evaluate(transposed.numpy(), *labels, 50, "plain")
    assert_same_evaluation(evaluate_rank(transposed, *labels, memory_budget=2**20, backend=backend), expected)
    assert_same_evaluation(evaluate_rank(transposed, *labels, chunk_size=64, backend=backend), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_first_and_last_ranks_are_exact_where_most_entries_lie_before_the_last_match(backend):
    """Uninformative distances: nearly every entry lies before the last match."""
    generator = np.random.default_rng(4)
    distmat, *labels = random_case(generator, 40, 3000, 30, 6, "continuous")
    expected = argsort_evaluate(distmat, *labels, 50, "plain")
    assert_same_evaluation(evaluate_rank(distmat, *labels, chunk_size=16, backend=backend), expected)


def random_lists(generator, num_rows, num_g, values):
    """A [B, G] distance block and same-identity lists for it (offsets starting past 0, as a chunk
    of a longer query list has them): per row up to 40 entries, matches and junk, ascending.
    values: "continuous"; "ties" (a few levels, -0.0 and 0.0 among them); "awkward" (infinities,
    huge and tiny magnitudes, every match at one distance in some rows)."""
    if values == "ties":
        levels = np.array([-1.0, -0.0, 0.0, 0.5, 2.0], np.float32)
        dist = levels[generator.integers(0, len(levels), (num_rows, num_g))]
    else:
        dist = generator.normal(size=(num_rows, num_g)).astype(np.float32)
    cols, is_match, sizes = [np.array([3, 7])], [np.array([True, False])], []  # a preceding row's
    for row in range(num_rows):
        size = int(generator.integers(0, min(num_g, 40) + 1))
        row_cols = np.sort(generator.choice(num_g, size, replace=False))
        row_match = generator.random(size) < 0.7
        if values == "awkward":
            kind = row % 4
            if kind == 0:  # every match at one distance: a single distinct match distance
                dist[row, row_cols] = dist[row, row_cols[0]] if size else 0
            elif kind == 1:  # infinite distances, matches among them
                dist[row, generator.random(num_g) < 0.3] = np.inf
                dist[row, generator.random(num_g) < 0.1] = -np.inf
            elif kind == 2:  # finite magnitudes whose differences overflow float32
                dist[row] = np.clip(dist[row], -3, 3) * np.float32(1e38)
            else:  # tiny magnitudes
                dist[row] *= np.float32(1e-40)
        cols.append(row_cols)
        is_match.append(row_match)
        sizes.append(size)
    offsets = np.concatenate([[0], np.cumsum(sizes)]) + 2
    return (torch.from_numpy(dist), torch.from_numpy(offsets).long(), torch.from_numpy(np.concatenate(cols)).long(),
            torch.from_numpy(np.concatenate(is_match)))


@needs_kernel
@pytest.mark.parametrize("values", ["continuous", "ties", "awkward"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_match_ranks_kernel_equals_reference(values, dtype):
    """The op's C++ kernel against its plain-PyTorch reference, exactly, on fresh random lists."""
    generator = np.random.default_rng([["continuous", "ties", "awkward"].index(values), dtype == torch.float64])
    for _ in range(10):
        num_rows, num_g = int(generator.integers(1, 30)), int(generator.integers(1, 700))
        dist, offsets, cols, is_match = random_lists(generator, num_rows, num_g, values)
        dist = dist.to(dtype)
        sizes = torch.diff(offsets)
        rows = torch.repeat_interleave(torch.arange(num_rows), sizes)
        k_max = int(torch.bincount(rows[is_match[2:]], minlength=num_rows).max()) + 2  # slack columns
        kernel = torch.ops.reidfast.evaluate_rank_match_ranks(dist, offsets, cols, is_match, k_max)
        reference = match_ranks_reference(dist, offsets, cols, is_match, k_max)
        torch.testing.assert_close(kernel, reference, rtol=0, atol=0)


@needs_kernel
def test_match_ranks_opcheck():
    generator = np.random.default_rng(11)
    dist, offsets, cols, is_match = random_lists(generator, 6, 50, "ties")
    torch.library.opcheck(torch.ops.reidfast.evaluate_rank_match_ranks.default, (dist, offsets, cols, is_match, 40))


@needs_kernel
@pytest.mark.parametrize("change, error, message", [
    (dict(dist=torch.zeros(2, 5, dtype=torch.float16)), TypeError, "dist must be float32 or float64"),
    (dict(same_offsets=torch.tensor([0, 2])), ValueError, r"same_offsets must have shape \[B \+ 1\] = \[3\]"),
    (dict(same_offsets=torch.tensor([0, 2, 1])), ValueError, "same_offsets must not decrease"),
    (dict(same_offsets=torch.tensor([0, 2, 4])), ValueError, r"must lie in \[0, 3\]"),
    (dict(same_cols=torch.tensor([1, 0, 4])), ValueError, "same_cols must ascend within a row, got 1 then 0"),
    (dict(same_cols=torch.tensor([1, 2, 5])), ValueError, r"same_cols must be in \[0, 5\), got 5"),
    (dict(max_matches=1), ValueError, "row 0 has 2 matches, more than max_matches = 1"),
])
def test_match_ranks_kernel_errors(change, error, message):
    arguments = dict(dist=torch.zeros(2, 5), same_offsets=torch.tensor([0, 2, 3]), same_cols=torch.tensor([1, 2, 4]),
                     same_is_match=torch.tensor([True, True, False]), max_matches=2)
    arguments.update(change)
    with pytest.raises(error, match=message):
        torch.ops.reidfast.evaluate_rank_match_ranks(*arguments.values())


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluate_from_features_equals_distance_matrix(metric):
    """Integer features make every distance the same whatever the chunking, ties included."""
    generator = torch.Generator().manual_seed(5)
    queries = torch.randint(-2, 3, (70, 6), generator=generator).float()
    gallery = torch.randint(-2, 3, (400, 6), generator=generator).float()
    labels = [torch.randint(0, 10, (70,), generator=generator), torch.randint(0, 10, (400,), generator=generator),
              torch.randint(0, 3, (70,), generator=generator), torch.randint(0, 3, (400,), generator=generator)]
    if metric == "euclidean":
        distmat = pairwise_distance(queries, gallery)
    else:
        distmat = _GalleryDistances(gallery, "cosine", rows=70, memory_budget=2**30)(queries)
        cosine = torch.nn.functional.cosine_similarity(queries[:, None], gallery[None], dim=2)
        torch.testing.assert_close(distmat, 1 - cosine, rtol=0, atol=1e-6)
    expected = evaluate_rank(distmat, *labels, max_rank=20)
    for chunking in (dict(chunk_size=9), dict(memory_budget=2**14), dict()):  # 2**14: one query, 113 gallery columns
        got = evaluate(queries, gallery, *labels, metric=metric, max_rank=20, **chunking)
        np.testing.assert_allclose(got.all_ap, expected.all_ap, rtol=1e-12)
        np.testing.assert_array_equal(got.cmc, expected.cmc)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gallery_blocks_equal_pairwise_distance(dtype):
    """The gallery's squared norms, computed once, give each block exactly pairwise_distance's values."""
    generator = torch.Generator().manual_seed(8)
    queries = torch.randn(13, 37, generator=generator, dtype=dtype)
    gallery = torch.randn(301, 37, generator=generator, dtype=dtype)
    blocks = _GalleryDistances(gallery, "euclidean", rows=13, memory_budget=2**15)
    assert blocks.block < gallery.shape[0]  # several gallery blocks
    # Block by block: the matrix multiply's rounding may depend on its shape.
    expected = torch.cat([pairwise_distance(queries, part) for part in gallery.split(blocks.block)], 1)
    torch.testing.assert_close(blocks(queries), expected, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cuda_equals_cpu(dtype):
    generator = np.random.default_rng(6)
    distmat, *labels = random_case(generator, 60, 500, 10, 3, "ties")
    cpu = evaluate_rank(torch.from_numpy(distmat).to(dtype), *labels, ap="trapezoid")
    cuda = evaluate_rank(torch.from_numpy(distmat).to(dtype).cuda(), *(torch.from_numpy(x).cuda() for x in labels),
                         ap="trapezoid", chunk_size=13)
    np.testing.assert_array_equal(cuda.cmc, cpu.cmc)
    np.testing.assert_allclose(cuda.all_ap, cpu.all_ap, rtol=1e-12)
    queries, gallery = torch.randn(50, 16), torch.randn(300, 16)
    labels = [np.arange(50) % 7, np.arange(300) % 7, np.arange(50) % 2, np.arange(300) % 3]
    on_cpu = evaluate(queries, gallery, *labels)
    on_cuda = evaluate(queries.cuda(), gallery.cuda(), *labels)
    np.testing.assert_allclose(on_cuda.all_ap, on_cpu.all_ap, rtol=1e-6)


def labels_for(num_q, num_g):
    return dict(q_pids=np.zeros(num_q, np.int64), g_pids=np.zeros(num_g, np.int64),
                q_camids=np.zeros(num_q, np.int64), g_camids=np.ones(num_g, np.int64))


@pytest.mark.parametrize("change, error, message", [
    (dict(distmat=np.zeros((2, 3, 1), np.float32)), ValueError, r"distmat must be 2-D \[Q, G\], got shape \(2, 3, 1\)"),
    (dict(distmat=np.zeros((2, 3), np.int32)), TypeError,
     "distmat must be float16, bfloat16, float32 or float64, got torch.int32"),
    (dict(distmat=[[0.0, 1.0, 2.0]] * 2), TypeError, "distmat must be a numpy array or a Tensor, got list"),
    (dict(q_pids=np.zeros(3, np.int64)), ValueError, "q_pids must hold Q=2 labels, got 3"),
    (dict(g_camids=np.zeros(3, np.float32)), TypeError, "g_camids must have an integer dtype, got torch.float32"),
    (dict(g_pids=np.zeros((3, 1), np.int64)), ValueError, r"g_pids must be 1-D \[G\], got shape \(3, 1\)"),
    (dict(max_rank=0), ValueError, "max_rank must be >= 1, got 0"),
    (dict(ap="mean"), ValueError, r"ap must be one of \('plain', 'trapezoid'\), got 'mean'"),
    (dict(chunk_size=0), ValueError, "chunk_size must be >= 1, got 0"),
    (dict(memory_budget=2.5), TypeError, "memory_budget must be an int, got float 2.5"),
    (dict(distmat=np.array([[0.0, 1.0, 2.0], [0.0, np.nan, 1.0]], np.float32)), ValueError,
     "distmat: distance of query 1 to gallery entry 1 is NaN"),
    (dict(g_camids=np.zeros(3, np.int64)), ValueError, "q_pids: no query has a true match"),
])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_evaluate_rank_errors(change, error, message, backend):
    arguments = dict(distmat=np.zeros((2, 3), np.float32), **labels_for(2, 3))
    arguments.update(change)
    with pytest.raises(error, match=message):
        evaluate_rank(**arguments, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_in_a_match_distance_raises(backend):
    distmat = np.array([[0.0, 1.0, 2.0], [np.nan, 0.5, 1.0]], np.float32)  # query 1's matches: all
    with pytest.raises(ValueError, match="distmat: distance of query 1 to gallery entry 0 is NaN"):
        evaluate_rank(distmat, **labels_for(2, 3), backend=backend)


def test_backend_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        evaluate_rank(np.zeros((2, 3), np.float32), **labels_for(2, 3), backend="fast")
    if reidfast.available_backends()["triton"].available:
        with pytest.raises(RuntimeError, match="has no kernel for evaluate_rank"):
            evaluate_rank(np.zeros((2, 3), np.float32), **labels_for(2, 3), backend="triton")


@pytest.mark.parametrize("change, error, message", [
    (dict(gallery_features=torch.zeros(3, 5)), ValueError, "gallery_features must have query_features' dimension D=4"),
    (dict(gallery_features=torch.zeros(3, 4, dtype=torch.float64)), ValueError,
     "gallery_features must have query_features' dtype and device"),
    (dict(query_features=torch.zeros(2, 4, dtype=torch.int64)), TypeError, "query_features must be float16"),
    (dict(query_features=torch.zeros(8)), ValueError, r"query_features must be 2-D \[N, D\]"),
    (dict(metric="l1"), ValueError, r"metric must be one of \('euclidean', 'cosine'\), got 'l1'"),
    (dict(query_features=torch.tensor([[0.0] * 4, [float("nan")] * 4])), ValueError,
     "query_features and gallery_features: distance of query 1 to gallery entry 0 is NaN"),
])
def test_evaluate_errors(change, error, message):
    arguments = dict(query_features=torch.zeros(2, 4), gallery_features=torch.zeros(3, 4), **labels_for(2, 3))
    arguments.update(change)
    with pytest.raises(error, match=message):
        evaluate(**arguments)

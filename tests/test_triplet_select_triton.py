"""The Triton triplet_select kernels against the plain-PyTorch specification.

Without a GPU they run in the Triton interpreter on CPU tensors (see conftest.py), which costs
milliseconds per program instance, so the shapes stay small; the tile sizes are shrunk for some
tests so that several row blocks, column tiles, split columns and the merge kernel all run.
Float32 only: the interpreter's bfloat16 is not reliable."""

import pytest

pytest.importorskip("triton")
import torch  # noqa: E402

from reidfast.kernels import triplet_select as kernels  # noqa: E402
from reidfast.ops.distance import distance_matrix  # noqa: E402
from reidfast.ops.triplet_select import _reference_select  # noqa: E402

RTOL = 1e-5


@pytest.fixture(params=["default", "small-tiles", "small-tiles-split"])
def tiles(request, monkeypatch):
    """default: the launcher's tiles; small-tiles: 16 x 16 tiles, one program per row block
    looping over several column tiles; small-tiles-split: every column tile its own program, and
    the merge kernel."""
    if request.param != "default":
        monkeypatch.setitem(kernels._TILES, torch.float32, (16, 16, 16, 4))
        monkeypatch.setattr(kernels, "_TARGET_PROGRAMS", 1 if request.param == "small-tiles" else 10**6)
    return request.param


def _uneven_labels(counts, generator):
    """Labels with the given number of images per identity, in shuffled order."""
    labels = torch.cat([torch.full((n,), identity, dtype=torch.int64) for identity, n in enumerate(counts)])
    return labels[torch.randperm(labels.numel(), generator=generator)]


def _reference_matrix(x, ref, self_reference, squared):
    dist = distance_matrix(x, ref, squared)
    if self_reference:
        dist.fill_diagonal_(0.0)
    return dist


def _check(x, labels, ref, ref_labels, self_reference, k, p, squared, exact=False):
    """Compare the kernel with the reference. Distances within RTOL; indices equal wherever the
    reference's chosen distance is separated from the other candidates of its side (or always,
    when `exact`: every distance is then computed without rounding error)."""
    got = kernels.triplet_select_forward(x, labels, ref, ref_labels, self_reference, k, p, squared)
    want = _reference_select(x, labels, ref, ref_labels, self_reference, k, p, squared)
    assert got[0].dtype == x.dtype and got[1].dtype == x.dtype
    assert got[2].dtype == torch.int64 and got[3].dtype == torch.int64
    torch.testing.assert_close(got[0], want.pos_dist, rtol=RTOL, atol=0, equal_nan=True)
    torch.testing.assert_close(got[1], want.neg_dist, rtol=RTOL, atol=0, equal_nan=True)
    if exact:
        torch.testing.assert_close(got[2], want.pos_index, rtol=0, atol=0)
        torch.testing.assert_close(got[3], want.neg_index, rtol=0, atol=0)
        return got

    dist = _reference_matrix(x, ref, self_reference, squared)
    same = labels[:, None] == ref_labels[None, :]
    for side, (got_index, want_index, want_dist, member) in enumerate(
        ((got[2], want.pos_index, want.pos_dist, same), (got[3], want.neg_index, want.neg_dist, ~same))
    ):
        for i in range(x.shape[0]):
            j, w = int(got_index[i]), int(want_index[i])
            if w < 0:
                assert j == -1, (side, i)
                continue
            # The chosen index is a candidate of the right side at the chosen distance.
            assert 0 <= j < ref.shape[0] and bool(member[i, j]), (side, i, j)
            torch.testing.assert_close(dist[i, j], dist[i, w], rtol=1e-4, atol=1e-5, equal_nan=True)
            v = want_dist[i]
            row = dist[i][member[i]]
            if torch.isnan(v):
                near = int(torch.isnan(row).sum())
            else:
                near = int(((row - v).abs() <= 1e-4 * v.abs() + 1e-6).sum())
            if near == 1:
                assert j == w, (side, i, j, w)
    return got


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("k, p", [(1, 1), (2, 3), (4, 1), (32, 32)])
def test_batch_uneven_identities(tiles, k, p, squared):
    """Against the batch itself, identities of 1 to 9 images: k and p beyond some counts."""
    generator = torch.Generator().manual_seed(k * 100 + p + squared)
    labels = _uneven_labels([9, 1, 4, 7, 2, 5, 3, 6], generator)  # N = 37
    x = torch.randn(labels.numel(), 13, generator=generator)
    _check(x, labels, x, labels, True, k, p, squared)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("k, p", [(1, 1), (3, 5), (8, 32)])
def test_memory_bank(tiles, k, p, squared):
    """Against a memory bank of another size, with identities absent from the batch."""
    generator = torch.Generator().manual_seed(k * 10 + p + 7 * squared)
    labels = _uneven_labels([3, 5, 2, 6, 4], generator)  # N = 20
    ref_labels = _uneven_labels([10, 1, 7, 14, 3, 9, 11, 15], generator)  # M = 70
    x = torch.randn(labels.numel(), 24, generator=generator)
    ref = torch.randn(ref_labels.numel(), 24, generator=generator)
    _check(x, labels, ref, ref_labels, False, k, p, squared)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("k, p", [(1, 1), (2, 2), (3, 6), (16, 9)])
def test_ties_go_to_the_lower_index(tiles, k, p, squared):
    """Small integer embeddings: every distance is exact and many repeat (duplicated rows sit at
    the clamped minimum), so the tie-breaking by index must match exactly."""
    generator = torch.Generator().manual_seed(k + 10 * p + squared)
    labels = _uneven_labels([6, 2, 5, 1, 8, 4], generator)  # N = 26
    x = torch.randint(-1, 2, (labels.numel(), 5), generator=generator).float()
    x[7] = x[3]
    x[20] = x[3]
    _check(x, labels, x, labels, True, k, p, squared, exact=True)


@pytest.mark.parametrize("k, p", [(1, 1), (3, 4)])
def test_ties_in_memory_bank(tiles, k, p):
    generator = torch.Generator().manual_seed(5 * k + p)
    labels = _uneven_labels([4, 6, 3, 5], generator)  # N = 18
    ref_labels = _uneven_labels([12, 16, 9, 20, 7], generator)  # M = 64
    x = torch.randint(-2, 3, (labels.numel(), 7), generator=generator).float()
    ref = torch.randint(-2, 3, (ref_labels.numel(), 7), generator=generator).float()
    ref[40] = x[0]  # distance at the clamp
    _check(x, labels, ref, ref_labels, False, k, p, False, exact=True)


def test_anchors_without_positives_or_negatives(tiles):
    """Anchor label 0 has no negative in the bank, label 1 no positive: (+inf, -1), (-inf, -1)."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    ref_labels = torch.zeros(33, dtype=torch.int64)
    x = torch.randn(labels.numel(), 9, generator=generator)
    ref = torch.randn(ref_labels.numel(), 9, generator=generator)
    pos_dist, neg_dist, pos_index, neg_index = _check(
        x, labels, ref, ref_labels, False, 2, 3, False, exact=True
    )
    anchors_1 = labels == 1
    assert torch.all(pos_dist[anchors_1] == float("-inf")) and torch.all(pos_index[anchors_1] == -1)
    assert torch.all(neg_dist[~anchors_1] == float("inf")) and torch.all(neg_index[~anchors_1] == -1)
    assert torch.all(pos_index[~anchors_1] >= 0) and torch.all(neg_index[anchors_1] >= 0)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("k, p", [(1, 1), (2, 3)])
def test_nan_ranks_as_the_largest_distance(tiles, k, p, value):
    """NaN reference rows: the largest positives (lowest NaN index first), the last negatives.
    Infinite entries give infinite or NaN distances (inf - inf), ranked the same way."""
    generator = torch.Generator().manual_seed(k + p)
    labels = _uneven_labels([4, 5, 3], generator)  # N = 12
    ref_labels = _uneven_labels([9, 8, 10, 7], generator)  # M = 34
    x = torch.randn(labels.numel(), 6, generator=generator)
    ref = torch.randn(ref_labels.numel(), 6, generator=generator)
    ref[[5, 17, 30]] = value
    x[4] = value  # every distance of this anchor is NaN (inf: NaN or inf)
    x[7, 2] = value
    _check(x, labels, ref, ref_labels, False, k, p, False, exact=True)


def test_strided_inputs_and_odd_d():
    """x transposed in memory, labels a strided view, D = 3 (below one D step)."""
    generator = torch.Generator().manual_seed(11)
    labels = _uneven_labels([5, 3, 7, 2, 4], generator)  # N = 21
    x = torch.randn(3, labels.numel(), generator=generator).t()
    strided_labels = torch.stack([labels, -labels], dim=1)[:, 0]
    assert not x.is_contiguous() and strided_labels.stride(0) == 2
    _check(x, strided_labels, x, strided_labels, True, 2, 2, False)


def test_single_anchor_and_empty_batch():
    x = torch.randn(1, 4)
    labels = torch.tensor([3])
    ref = torch.randn(5, 4)
    ref_labels = torch.tensor([3, 1, 3, 2, 1])
    _check(x, labels, ref, ref_labels, False, 1, 2, False)
    out = kernels.triplet_select_forward(x[:0], labels[:0], ref, ref_labels, False, 1, 1, False)
    assert [t.shape for t in out] == [torch.Size([0])] * 4


@pytest.mark.parametrize("k, p", [(33, 1), (1, 33), (0, 1)])
def test_ranks_out_of_range_raise(k, p):
    x = torch.randn(4, 3)
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="k and p"):
        kernels.triplet_select_forward(x, labels, x, labels, True, k, p, False)


def test_plan_splits_only_when_programs_are_few():
    small = kernels.plan(256, 256, 2048, torch.float16, 1, 1)
    bank = kernels.plan(1024, 65536, 2048, torch.float16, 1, 1)
    assert bank.splits > 1 and bank.splits * bank.tiles_per_split >= 65536 // bank.block_m
    assert (bank.splits - 1) * bank.tiles_per_split < 65536 // bank.block_m  # no empty split
    assert small.k_width == 1 and kernels.plan(8, 8, 8, torch.float32, 5, 17).p_width == 32


def test_sizes_past_the_int32_index_limit_raise():
    """Row and column indices are int32 in the kernels: larger N, M or D are refused before launch."""
    from reidfast.kernels._launch import INDEX_LIMIT

    kernels.plan(INDEX_LIMIT, 8, 8, torch.float32, 1, 1)
    for sizes, name in (((INDEX_LIMIT + 1, 8, 8), "N"), ((8, 2**31, 8), "M"), ((8, 8, 2**31), "D")):
        with pytest.raises(ValueError, match=rf"{name} = \d+ exceeds the kernels' int32 index limit {INDEX_LIMIT}"):
            kernels.plan(*sizes, torch.float32, 1, 1)

"""The Triton adaptive_margin kernels against the plain-PyTorch specification.

Without a GPU they run in the Triton interpreter on CPU tensors (see conftest.py), which costs
milliseconds per program instance, so the shapes stay small; the tile sizes are shrunk for some
tests so that several row blocks, split column tiles, the gradient workspace and split gradient
columns all run. Float32 only: the interpreter's bfloat16 is not reliable. The 16-bit slope
operands (a sign matrix, or two masks) are exercised on float32 data by swapping the gradient
launch's SLOPES constexpr."""

import pytest

pytest.importorskip("triton")
import torch  # noqa: E402

from reidfast.kernels import adaptive_margin as kernels  # noqa: E402
from reidfast.kernels._launch import run_launch  # noqa: E402
from reidfast.ops.adaptive_margin import _reference_loss  # noqa: E402
from reidfast.ops.distance import distance_matrix  # noqa: E402
from reidfast.ops.enums import REDUCTIONS  # noqa: E402

# (scale of x, mu, gamma): the defaults, where every positive pair is past Mp and negatives
# straddle Mn; and smaller distances with margins inside both distributions.
SETTINGS = {"defaults": (1.0, 8.0, 2.1), "both-branches": (0.3, 1.0, 0.5)}


@pytest.fixture(params=["default", "small-tiles", "small-tiles-split"])
def tiles(request, monkeypatch):
    """default: the launcher's tiles (one row block, the gradient in registers); small-tiles: 16
    x 16 tiles, one program per row block looping over its column tiles, the gradient through
    the workspace; small-tiles-split: every column tile its own program, one gradient chunk per
    program (D split, in registers)."""
    if request.param != "default":
        monkeypatch.setitem(kernels._TILES, torch.float32, (16, 16, 16, 4))
        many = request.param == "small-tiles-split"
        monkeypatch.setattr(kernels, "_TARGET_PROGRAMS", 10**6 if many else 1)
        monkeypatch.setattr(kernels, "_GRAD_TARGET_PROGRAMS", 10**6 if many else 1)
        monkeypatch.setattr(kernels, "_MAX_GRAD_SPLITS", 10**6 if many else 1)
    return request.param


def _uneven_labels(counts, generator):
    """Labels with the given number of images per identity, in shuffled order."""
    labels = torch.cat([torch.full((n,), 7 * identity + 3, dtype=torch.int64) for identity, n in enumerate(counts)])
    return labels[torch.randperm(labels.numel(), generator=generator)]


def _reference(x, labels, mu, gamma, reduction):
    """(loss, margins [4], dloss/dx) of the specification, in float32."""
    xr = x.detach().clone().requires_grad_()
    loss, margins = _reference_loss(xr, labels, mu, gamma, reduction)
    (grad,) = torch.autograd.grad(loss, xr)
    return loss.detach(), torch.stack([m.detach() for m in margins]), grad


def _check(x, labels, mu, gamma, reduction, compute_grad, got=None):
    if got is None:
        got = kernels.adaptive_margin_forward(x, labels, mu, gamma, reduction, compute_grad)
    loss, margins, grad = got
    want_loss, want_margins, want_grad = _reference(x, labels, mu, gamma, reduction)
    assert loss.shape == () and loss.dtype == torch.float32
    assert margins.shape == (4,) and margins.dtype == torch.float32
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(margins, want_margins, rtol=1e-5, atol=0)
    if compute_grad:
        assert grad.shape == x.shape and grad.dtype == x.dtype and grad.is_contiguous()
        # Both sides round a sum over N pairs in float32 (measured against float64: errors of
        # about 1e-7 of the largest element, alike for both), so the absolute tolerance scales
        # with that element where it passes 1, as under "sum".
        scale = max(1.0, float(want_grad.abs().max()))
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6 * scale)
    else:
        assert grad.shape == (0, x.shape[1]) and grad.dtype == x.dtype
    return got


@pytest.mark.parametrize("compute_grad", [False, True])
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_uneven_identities(tiles, reduction, setting, compute_grad):
    """Identities of 1 to 9 images, D = 13 (odd: masked D steps and gradient columns)."""
    scale, mu, gamma = SETTINGS[setting]
    generator = torch.Generator().manual_seed(len(reduction) * 10 + len(setting) + compute_grad)
    labels = _uneven_labels([9, 1, 4, 7, 2, 5, 3, 6], generator)  # N = 37
    x = scale * torch.randn(labels.numel(), 13, generator=generator)
    _check(x, labels, mu, gamma, reduction, compute_grad)


def test_both_hinge_branches_are_exercised():
    """In the 'both-branches' setting some pairs of each kind are inside and some outside their
    margin, so the hinges' active and inactive sides both count."""
    scale, mu, gamma = SETTINGS["both-branches"]
    generator = torch.Generator().manual_seed(5)
    labels = _uneven_labels([9, 1, 4, 7, 2, 5, 3, 6], generator)
    x = scale * torch.randn(labels.numel(), 13, generator=generator)
    _, margins = _reference_loss(x, labels, mu, gamma, "sum")
    dist = distance_matrix(x, x, squared=True)
    upper = torch.ones_like(dist, dtype=torch.bool).triu(1)
    same = labels[:, None] == labels[None, :]
    pos, neg = dist[upper & same], dist[upper & ~same]
    assert 0 < int((pos > margins.mp).sum()) < pos.numel()
    assert 0 < int((neg < margins.mn).sum()) < neg.numel()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_columns_even_and_wide(tiles, reduction):
    """D = 16 (one whole gradient chunk) and D = 24 (two 16-column chunks, the second masked:
    split over two programs, or both through the workspace), N = 48 (three 16-row blocks)."""
    cfg = kernels.plan(48, 24, torch.float32)
    expected = {"default": (2, 1), "small-tiles": (1, 2), "small-tiles-split": (2, 1)}[tiles]
    assert (cfg.grad_splits, cfg.chunks_per_split) == expected  # chunks_per_split 1: in registers
    generator = torch.Generator().manual_seed(len(reduction))
    for n, d in ((29, 16), (48, 24)):
        labels = torch.randint(0, 6, (n,), generator=generator)
        x = 0.4 * torch.randn(n, d, generator=generator)
        _check(x, labels, 2.0, 1.0, reduction, True)


# The sign matrix needs one scale for both kinds of pair: "mean" and "sum" only.
@pytest.mark.parametrize("reduction, slopes", [("mean", 1), ("sum", 1), ("mean", 2), ("sum", 2), ("balanced", 2)])
def test_16_bit_slope_operands(tiles, reduction, slopes):
    """The sign matrix and the two masks that 16-bit x multiplies, here on float32 x."""
    scale, mu, gamma = SETTINGS["both-branches"]
    generator = torch.Generator().manual_seed(3 * slopes + len(reduction))
    labels = _uneven_labels([5, 3, 7, 2, 4, 6], generator)  # N = 27
    x = scale * torch.randn(labels.numel(), 21, generator=generator)
    buffers = kernels.allocate(x, True)
    launches = kernels.forward_launches(x, labels, mu, gamma, reduction, True, buffers)
    assert launches[2].kernel is kernels._hinge_grad_kernel
    launches[2] = launches[2]._replace(constexprs={**launches[2].constexprs, "SLOPES": slopes})
    for launch in launches:
        run_launch(launch)
    _check(x, labels, mu, gamma, reduction, True, got=(buffers.loss, buffers.margins, buffers.grad))


@pytest.mark.parametrize("compute_grad", [False, True])
def test_strided_inputs_and_small_d(tiles, compute_grad):
    """x transposed in memory with D = 3 (below one D step), x a column-strided view, labels a
    strided view."""
    generator = torch.Generator().manual_seed(11 + compute_grad)
    labels = _uneven_labels([5, 3, 7, 2, 4], generator)  # N = 21
    strided_labels = torch.stack([labels, -labels], dim=1)[:, 0]
    assert strided_labels.stride(0) == 2
    x = torch.randn(3, labels.numel(), generator=generator).t()
    assert not x.is_contiguous()
    _check(x, strided_labels, 8.0, 2.1, "mean", compute_grad)
    wide = 0.3 * torch.randn(labels.numel(), 22, generator=generator)
    x = wide[:, ::2]  # D = 11, stride 2
    assert x.stride() == (22, 2)
    _check(x, strided_labels, 1.0, 0.5, "balanced", compute_grad)


def test_duplicate_rows_at_the_clamp(tiles):
    """Rows repeated within and across identities: their distances sit at the clamp (a negative
    pair there is inside Mn and adds to the loss) and add nothing to the gradient."""
    generator = torch.Generator().manual_seed(7)
    labels = _uneven_labels([4, 6, 3, 5], generator)  # N = 18
    x = torch.randint(-2, 3, (labels.numel(), 7), generator=generator).float()
    same = [j for j in range(1, labels.numel()) if labels[j] == labels[0]][0]
    other = [j for j in range(1, labels.numel()) if labels[j] != labels[0]][0]
    x[same] = x[0]
    x[other] = x[0]
    for reduction in REDUCTIONS:
        _check(x, labels, 8.0, 2.1, reduction, True)


def test_two_identities_of_two():
    """The smallest batch with both kinds of pair: N = 3."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([4, 4, 9])
    for reduction in REDUCTIONS:
        _check(x, labels, 1.0, 1.0, reduction, True)


def test_repeatable_bit_for_bit(tiles):
    """No float atomics: the same inputs give the same bits."""
    generator = torch.Generator().manual_seed(13)
    labels = _uneven_labels([6, 2, 5, 8, 4], generator)  # N = 25
    x = 0.3 * torch.randn(labels.numel(), 10, generator=generator)
    first = kernels.adaptive_margin_forward(x, labels, 1.0, 0.5, "balanced", True)
    second = kernels.adaptive_margin_forward(x, labels, 1.0, 0.5, "balanced", True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_invalid_arguments_raise():
    x = torch.randn(4, 3)
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="reduction"):
        kernels.adaptive_margin_forward(x, labels, 8.0, 2.1, "max", False)
    with pytest.raises(TypeError, match="float32"):
        kernels.adaptive_margin_forward(x.double(), labels, 8.0, 2.1, "mean", False)
    with pytest.raises(ValueError, match="N >= 3"):
        kernels.adaptive_margin_forward(x[:2], labels[:2], 8.0, 2.1, "mean", False)


def test_plan_splits():
    """Pair programs split a row block's column tiles without empty splits in row block 0; the
    gradient splits D only up to _MAX_GRAD_SPLITS, and keeps one chunk per program in registers
    when that covers D."""
    big = kernels.plan(4096, 128, torch.float16)
    assert big.row_blocks == 64 and big.splits * big.row_blocks >= kernels._TARGET_PROGRAMS
    assert (big.splits - 1) * big.tiles_per_split < big.row_blocks <= big.splits * big.tiles_per_split
    assert big.chunks_per_split == 1 and big.grad_splits * big.block_g >= 128
    wide = kernels.plan(256, 2048, torch.bfloat16)
    assert wide.grad_splits == kernels._MAX_GRAD_SPLITS and wide.chunks_per_split > 1
    small = kernels.plan(20, 5, torch.float32)
    assert (small.block, small.row_blocks, small.splits, small.grad_splits) == (32, 1, 1, 1)


@pytest.mark.parametrize("poison", ["nan-row", "nan-element", "inf-element"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nan_and_inf_propagate_as_in_the_reference(tiles, reduction, poison):
    """A NaN or infinite embedding: the loss, the margins and the gradient are NaN (and infinite)
    exactly where the reference's are, with and without the gradient pass."""
    generator = torch.Generator().manual_seed(len(reduction) + len(poison))
    labels = _uneven_labels([4, 3, 5, 2, 6], generator)  # N = 20
    x = 0.3 * torch.randn(labels.numel(), 6, generator=generator)
    if poison == "nan-row":
        x[5] = float("nan")
    else:
        x[5, 2] = float("nan") if poison == "nan-element" else float("inf")
    want_loss, want_margins, want_grad = _reference(x, labels, 1.0, 0.5, reduction)
    assert torch.isnan(want_loss) and torch.isnan(want_grad).any()
    for compute_grad in (False, True):
        loss, margins, grad = kernels.adaptive_margin_forward(x, labels, 1.0, 0.5, reduction, compute_grad)
        torch.testing.assert_close(loss, want_loss, equal_nan=True)
        torch.testing.assert_close(margins, want_margins, rtol=1e-5, atol=0, equal_nan=True)
        if compute_grad:
            assert torch.equal(torch.isnan(grad), torch.isnan(want_grad))
            torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6, equal_nan=True)


def test_sizes_past_the_limits_raise():
    """Pair counts are exact up to MAX_ROWS rows; D is an int32 index."""
    kernels.plan(kernels.MAX_ROWS, 8, torch.float32)
    with pytest.raises(ValueError, match=r"N = 33554433 exceeds 33554432 rows"):
        kernels.plan(kernels.MAX_ROWS + 1, 8, torch.float32)
    with pytest.raises(ValueError, match=r"D = 2147483648 exceeds the kernels' int32 index limit"):
        kernels.plan(8, 2**31, torch.float32)

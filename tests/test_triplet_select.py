"""triplet_select, pairwise_distance and triplet_loss: the fused CPU backend against the reference,
the reference against an independent per-anchor loop, gradients, registration, and each error."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import reidfast
from compile_check import assert_compiles_like_eager
from conftest import cpu_backends, seed_for
from numerics import assert_close_to_float64
from reidfast.losses import TripletLoss
from reidfast.ops import pairwise_distance, triplet_loss, triplet_select, triplet_select_reference
from reidfast.ops.distance import DISTANCE_EPS
from reidfast.ops.triplet_select import _KERNELS, MAX_GPU_RANK

FUSED_CPU = [name for name in ("cpu",) if reidfast.available_backends()[name].available]
# Every fused backend with this op's kernel that runs on CPU tensors here: Triton only in its
# interpreter (and only with the extension, whose backward op it shares).
FUSED = [name for name in cpu_backends() if name != "reference" and name in _KERNELS.implemented()]

# (N, D, identities): uneven identity counts come from drawing labels at random (with every
# identity present at least twice where the case allows it).
SHAPES = [(2, 3, 2), (7, 5, 3), (40, 17, 6), (67, 33, 9), (130, 8, 40)]
RANKS = [(1, 1), (2, 3), (4, 1), (100, 100)]


def refuses_ranks(backend, k, p, call) -> bool:
    """A GPU backend asked for ranks above its limit raises, naming it (reidfast.backend's limit
    policy); returns whether it did, so the caller skips the comparison."""
    if backend not in ("cuda", "triton") or max(k, p) <= MAX_GPU_RANK:
        return False
    with pytest.raises(ValueError, match=f"k and p must be at most {MAX_GPU_RANK} on the GPU kernels"):
        call()
    return True


def make_batch(n, d, identities, generator, dtype=torch.float32, values="random"):
    labels = torch.randint(0, identities, (n,), generator=generator) * 7 - 3  # any label values
    labels[:identities] = torch.arange(identities) * 7 - 3  # every identity present
    labels = labels[torch.randperm(n, generator=generator)]
    if values == "ties":  # a few integer values: many equal distances
        x = torch.randint(0, 2, (n, d), generator=generator).float()
    else:
        x = torch.randn(n, d, generator=generator)
    return x.to(dtype), labels


def loop_select(x, labels, k, p, squared, ref=None, ref_labels=None):
    """Independent specification: per anchor, Python lists sorted by the documented rule."""
    self_reference = ref is None
    if self_reference:
        ref, ref_labels = x, labels
    xs, rs = x.double(), ref.double()
    result = []
    for i in range(x.shape[0]):
        positives, negatives = [], []
        for j in range(ref.shape[0]):
            square = float(xs[i] @ xs[i] + rs[j] @ rs[j] - 2 * (xs[i] @ rs[j]))
            square = max(square, 1e-12)
            dist = square if squared else math.sqrt(square)
            if self_reference and i == j:
                dist = 0.0
            (positives if int(ref_labels[j]) == int(labels[i]) else negatives).append((dist, j))
        positives.sort(key=lambda c: (-c[0], c[1]))
        negatives.sort(key=lambda c: (c[0], c[1]))
        pos = positives[min(k, len(positives)) - 1]
        neg = negatives[min(p, len(negatives)) - 1]
        result.append((pos, neg))
    return result


def distinct(dist_row_sorted, rank, tolerance=1e-4):
    """Whether the rank-th candidate's distance is separated from its neighbours."""
    values = [d for d, _ in dist_row_sorted]
    at = values[rank]
    return all(abs(v - at) > tolerance * max(1.0, abs(at)) for i, v in enumerate(values) if i != rank)


def assert_same_selection(got, expected, rtol, atol, exact_indices=False):
    torch.testing.assert_close(got.pos_dist.float(), expected.pos_dist.float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(got.neg_dist.float(), expected.neg_dist.float(), rtol=rtol, atol=atol)
    if exact_indices:
        assert torch.equal(got.pos_index, expected.pos_index)
        assert torch.equal(got.neg_index, expected.neg_index)
    else:
        # A different index is allowed only where it holds the same distance (a near-tie).
        for dist, index, name in (("pos_dist", "pos_index", "pos"), ("neg_dist", "neg_index", "neg")):
            differ = getattr(got, index) != getattr(expected, index)
            gap = (getattr(got, dist).float() - getattr(expected, dist).float()).abs()[differ]
            assert torch.all(gap <= atol + rtol * getattr(expected, dist).float().abs()[differ]), name


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k, p", RANKS)
@pytest.mark.parametrize("squared", (False, True))
def test_reference_matches_loop(shape, k, p, squared):
    generator = torch.Generator().manual_seed(seed_for(shape, k, p, squared))
    x, labels = make_batch(*shape, generator, dtype=torch.float64)
    selection = triplet_select_reference(x, labels, k, p, squared)
    for i, (pos, neg) in enumerate(loop_select(x, labels, k, p, squared)):
        assert selection.pos_dist[i].item() == pytest.approx(pos[0], rel=1e-9, abs=1e-9)
        assert selection.neg_dist[i].item() == pytest.approx(neg[0], rel=1e-9, abs=1e-9)
        assert selection.pos_index[i].item() == pos[1]
        assert selection.neg_index[i].item() == neg[1]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k, p", RANKS)
@pytest.mark.parametrize("squared", (False, True))
def test_fused_matches_reference(backend, shape, k, p, squared):
    generator = torch.Generator().manual_seed(seed_for(backend, shape, k, p, squared))
    x, labels = make_batch(*shape, generator)
    x.requires_grad_(True)
    if refuses_ranks(backend, k, p, lambda: triplet_select(x, labels, k, p, squared, backend=backend)):
        return
    got = triplet_select(x, labels, k, p, squared, backend=backend)
    expected = triplet_select_reference(x, labels, k, p, squared)
    assert_same_selection(got, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn(2, x.shape[0], generator=generator)
    (grad_got,) = torch.autograd.grad((weights[0] * got.pos_dist + weights[1] * got.neg_dist).sum(), x)
    (grad_expected,) = torch.autograd.grad(
        (weights[0] * expected.pos_dist + weights[1] * expected.neg_dist).sum(), x
    )
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("k, p", [(1, 1), (3, 4), (50, 50)])
def test_ties_choose_the_lower_index(backend, k, p):
    generator = torch.Generator().manual_seed(11)
    x, labels = make_batch(48, 6, 5, generator, values="ties")
    if refuses_ranks(backend, k, p, lambda: triplet_select(x, labels, k, p, backend=backend)):
        return
    got = triplet_select(x, labels, k, p, backend=backend)
    expected = triplet_select_reference(x, labels, k, p)
    assert_same_selection(got, expected, rtol=0, atol=0, exact_indices=True)
    for i, (pos, neg) in enumerate(loop_select(x, labels, k, p, squared=False)):
        assert (got.pos_index[i].item(), got.neg_index[i].item()) == (pos[1], neg[1])


@pytest.mark.parametrize("backend", ["reference", *FUSED])
@pytest.mark.parametrize("k, p", [(1, 1), (2, 5), (1000, 1000)])
def test_memory_bank(backend, k, p):
    generator = torch.Generator().manual_seed(5)
    x, labels = make_batch(23, 12, 6, generator)
    ref, ref_labels = make_batch(301, 12, 6, generator)
    x.requires_grad_(True)
    ref.requires_grad_(True)
    def select():
        return triplet_select(x, labels, k, p, ref=ref, ref_labels=ref_labels, backend=backend)

    if refuses_ranks(backend, k, p, select):
        return
    got = select()
    for i, (pos, neg) in enumerate(loop_select(x.detach(), labels, k, p, False, ref.detach(), ref_labels)):
        assert got.pos_dist[i].item() == pytest.approx(pos[0], rel=1e-5)
        assert got.neg_dist[i].item() == pytest.approx(neg[0], rel=1e-5)
    expected = triplet_select_reference(x, labels, k, p, ref=ref, ref_labels=ref_labels)
    assert_same_selection(got, expected, rtol=1e-5, atol=1e-5)
    grads_got = torch.autograd.grad((got.pos_dist - 2 * got.neg_dist).sum(), (x, ref))
    grads_expected = torch.autograd.grad((expected.pos_dist - 2 * expected.neg_dist).sum(), (x, ref))
    for g, e in zip(grads_got, grads_expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_own_pair_is_the_easiest_positive_with_no_gradient(backend):
    # 4 identities x 3 images: k = 3 (the identity's image count) selects the anchor itself.
    x = torch.randn(12, 8, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(3)
    selection = triplet_select(x, labels, k=3, backend=backend)
    assert torch.equal(selection.pos_index, torch.arange(12))
    assert torch.all(selection.pos_dist == 0)
    (grad,) = torch.autograd.grad(selection.pos_dist.sum(), x)
    assert torch.all(grad == 0)


def selected_pairs_gradient(x, selection, weights):
    """d/dx sum(w_pos d_ap + w_neg d_an) in float64 at the pairs `selection` chose (x's own rows),
    with the package's distance sqrt(clamp(|a - b|^2, DISTANCE_EPS)), so an anchor's own pair has
    no gradient."""
    x64 = x.detach().double().requires_grad_()

    def distances(index):
        return (x64 - x64[index]).pow(2).sum(dim=1).clamp(min=DISTANCE_EPS).sqrt()

    weights = weights.double()
    total = (weights[0] * distances(selection.pos_index) + weights[1] * distances(selection.neg_index)).sum()
    return torch.autograd.grad(total, x64)[0]


def assert_selection_close_to_float64(x, labels, k, p, backend, factor, atol):
    """triplet_select of `backend` on x (any float dtype) by the float64 rule (tests/numerics.py):
    d_ap and d_an against the reference in float64, relative to the reference's own error in x's
    dtype; the gradient of sum(w_pos d_ap + w_neg d_an) against the float64 gradient at the pairs
    that each one selected (in a low dtype a near-tie may go either way, and either pair is right)."""
    weights = torch.randn(2, x.shape[0], generator=torch.Generator().manual_seed(x.shape[0])).to(x.device, x.dtype)

    def select_and_grad(select):
        leaf = x.detach().clone().requires_grad_()
        selection = select(leaf)
        (grad,) = torch.autograd.grad((weights[0] * selection.pos_dist + weights[1] * selection.neg_dist).sum(), leaf)
        return selection, grad

    got, grad_got = select_and_grad(lambda t: triplet_select(t, labels, k, p, backend=backend))
    baseline, grad_baseline = select_and_grad(lambda t: triplet_select_reference(t, labels, k, p))
    exact = triplet_select_reference(x.double(), labels, k, p)
    assert got.pos_dist.dtype == x.dtype and grad_got.dtype == x.dtype and got.pos_index.dtype == torch.int64
    assert_close_to_float64(
        (got.pos_dist, got.neg_dist, grad_got),
        (baseline.pos_dist, baseline.neg_dist, grad_baseline),
        (exact.pos_dist, exact.neg_dist, selected_pairs_gradient(x, got, weights)),
        baseline_exact=(exact.pos_dist, exact.neg_dist, selected_pairs_gradient(x, baseline, weights)),
        factor=factor, atol=atol, names=("pos_dist", "neg_dist", "grad_x"),
    )


@pytest.mark.parametrize("backend", FUSED_CPU)
@pytest.mark.parametrize(
    "dtype, factor, atol", [(torch.float16, 2.0, 1e-5), (torch.bfloat16, 2.0, 1e-4), (torch.float64, 2.0, 1e-12)]
)
def test_dtypes(backend, dtype, factor, atol):
    generator = torch.Generator().manual_seed(3)
    x, labels = make_batch(37, 16, 5, generator, dtype=dtype)
    assert_selection_close_to_float64(x, labels, 2, 2, backend, factor, atol)


@pytest.mark.parametrize("backend", FUSED)
def test_nan_ranks_as_the_largest_distance(backend):
    generator = torch.Generator().manual_seed(8)
    x, labels = make_batch(20, 4, 3, generator)
    x[5, 1] = float("nan")
    got = triplet_select(x, labels, 2, 2, backend=backend)
    expected = triplet_select_reference(x, labels, 2, 2)
    assert torch.equal(got.pos_index, expected.pos_index)
    assert torch.equal(got.neg_index, expected.neg_index)
    torch.testing.assert_close(got.pos_dist, expected.pos_dist, equal_nan=True)


@pytest.mark.parametrize("backend", FUSED_CPU)
@pytest.mark.parametrize("squared", (False, True))
def test_gradcheck(backend, squared):
    generator = torch.Generator().manual_seed(21)
    x, labels = make_batch(14, 5, 3, generator, dtype=torch.float64)
    ref, ref_labels = make_batch(19, 5, 3, generator, dtype=torch.float64)
    x.requires_grad_(True)
    ref.requires_grad_(True)

    def own(x):
        selection = triplet_select(x, labels, 2, 3, squared, backend=backend)
        return selection.pos_dist, selection.neg_dist

    def bank(x, ref):
        selection = triplet_select(x, labels, 2, 3, squared, ref=ref, ref_labels=ref_labels, backend=backend)
        return selection.pos_dist, selection.neg_dist

    assert torch.autograd.gradcheck(own, (x,))
    assert torch.autograd.gradcheck(bank, (x, ref))


@pytest.mark.skipif(not FUSED_CPU, reason="the extension is not built")
@pytest.mark.parametrize("self_reference", (True, False))
def test_opcheck(self_reference):
    generator = torch.Generator().manual_seed(2)
    x, labels = make_batch(16, 8, 4, generator)
    x.requires_grad_(True)
    ref, ref_labels = (x, labels) if self_reference else make_batch(30, 8, 4, generator)
    torch.library.opcheck(
        torch.ops.reidfast.triplet_select_forward.default,
        (x, labels, ref, ref_labels, self_reference, 2, 3, False),
    )


def check_backward_op(device, self_reference, squared, ref_grad):
    """The registered backward op on one selection against autograd through the reference."""
    generator = torch.Generator().manual_seed(6)
    x, labels = make_batch(33, 9, 5, generator)
    ref, ref_labels = (x, labels) if self_reference else make_batch(50, 9, 5, generator)
    x, labels, ref, ref_labels = (t.to(device) for t in (x, labels, ref, ref_labels))
    selection = torch.ops.reidfast.triplet_select_forward(x, labels, ref, ref_labels, self_reference, 2, 2, squared)
    grads = torch.randn(2, 33, generator=generator).to(device)
    arguments = (grads[0], grads[1], x, ref, *selection, self_reference, squared, ref_grad)
    grad_x, grad_ref = torch.ops.reidfast.triplet_select_backward(*arguments)

    xs = x.detach().clone().requires_grad_(True)
    rs = xs if self_reference else ref.detach().clone().requires_grad_(True)
    expected = triplet_select_reference(xs, labels, 2, 2, squared, *(() if self_reference else (rs, ref_labels)))
    inputs = (xs,) if self_reference else (xs, rs)
    expected_grads = torch.autograd.grad((grads[0] * expected.pos_dist + grads[1] * expected.neg_dist).sum(), inputs)
    torch.testing.assert_close(grad_x, expected_grads[0], rtol=1e-5, atol=1e-6)
    assert grad_x.abs().sum() > 0
    if ref_grad and not self_reference:
        torch.testing.assert_close(grad_ref, expected_grads[1], rtol=1e-5, atol=1e-6)
    else:  # the bank's gradient is not asked for (or is in grad_x): not even allocated
        assert grad_ref.shape == (0, x.shape[1])
    if not self_reference:
        torch.library.opcheck(torch.ops.reidfast.triplet_select_backward.default, arguments)


@pytest.mark.skipif(not FUSED_CPU, reason="the extension is not built")
@pytest.mark.parametrize("self_reference, ref_grad", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("squared", (False, True))
def test_backward_op(self_reference, squared, ref_grad):
    check_backward_op("cpu", self_reference, squared, ref_grad)


@pytest.mark.gpu
@pytest.mark.parametrize("self_reference, ref_grad", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("squared", (False, True))
def test_gpu_backward_op(self_reference, squared, ref_grad):
    check_backward_op("cuda", self_reference, squared, ref_grad)


@pytest.mark.skipif(not FUSED_CPU, reason="the extension is not built")
def test_frozen_bank_gets_no_gradient():
    calls = []  # the ref_grad argument of each backward op call, wherever it is called from

    class RecordBackward(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.reidfast.triplet_select_backward.default:
                calls.append(args[-1])
            return func(*args, **(kwargs or {}))

    generator = torch.Generator().manual_seed(8)
    x, labels = make_batch(12, 6, 3, generator)
    bank, bank_labels = make_batch(40, 6, 3, generator)
    x.requires_grad_(True)
    with RecordBackward():
        triplet_loss(x, labels, ref=bank, ref_labels=bank_labels, backend="cpu").backward()
        bank.requires_grad_(True)
        triplet_loss(x, labels, ref=bank, ref_labels=bank_labels, backend="cpu").backward()
    assert calls == [False, True]
    assert bank.grad is not None and bank.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["reference", *FUSED_CPU])
def test_compile_fullgraph(backend):
    generator = torch.Generator().manual_seed(4)
    x, labels = make_batch(24, 10, 4, generator)
    x.requires_grad_(True)

    def loss_fn(x, labels):
        return triplet_loss(x, labels, margin=0.5, soft=True, k=2, p=2, backend=backend)

    assert_compiles_like_eager(loss_fn, x, labels, inductor=backend != "reference")


@pytest.mark.parametrize("backend", ["reference", *FUSED_CPU])
@pytest.mark.parametrize("soft", (False, True))
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
def test_triplet_loss_formula(backend, soft, reduction):
    generator = torch.Generator().manual_seed(9)
    x, labels = make_batch(30, 7, 5, generator)
    margin = 0.3
    loss = triplet_loss(x, labels, margin=margin, soft=soft, k=2, p=3, reduction=reduction, backend=backend)
    per_anchor = []
    for pos, neg in loop_select(x, labels, 2, 3, squared=False):
        z = margin + pos[0] - neg[0]
        per_anchor.append(math.log1p(math.exp(z)) if soft else max(0.0, z))
    expected = torch.tensor(per_anchor)
    expected = {"mean": expected.mean(), "sum": expected.sum(), "none": expected}[reduction]
    torch.testing.assert_close(loss, expected.float(), rtol=1e-5, atol=1e-5)


def test_triplet_loss_module_normalizes():
    generator = torch.Generator().manual_seed(10)
    x, labels = make_batch(20, 6, 4, generator)
    module = TripletLoss(margin=0.2, normalize=True)
    expected = triplet_loss(F.normalize(x, dim=1), labels, margin=0.2)
    torch.testing.assert_close(module(x, labels), expected)
    assert "normalize=True" in repr(module)


def test_pairwise_distance():
    generator = torch.Generator().manual_seed(12)
    x, _ = make_batch(9, 5, 3, generator)
    y, _ = make_batch(4, 5, 2, generator)
    torch.testing.assert_close(pairwise_distance(x, y), torch.cdist(x, y), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pairwise_distance(x, y, squared=True), torch.cdist(x, y) ** 2, rtol=1e-4, atol=1e-4)
    own = pairwise_distance(x)
    assert own.shape == (9, 9)
    assert torch.all(own.diagonal() <= 1e-3)  # clamped at 1e-12 before the square root


# --------------------------------------------------------------------------------------------- GPU


def require_gpu_backend(backend):
    status = reidfast.available_backends()[backend]
    if "cuda" not in status.devices:
        pytest.fail(f"backend {backend!r} is not available on this GPU machine: {status.reason}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("n, d, identities", [(7, 5, 3), (256, 2048, 64), (1000, 128, 97)])
@pytest.mark.parametrize("k, p", [(1, 1), (4, 8), (32, 32), (40, 3)])
@pytest.mark.parametrize("dtype, factor, atol", [(torch.float32, 4.0, 1e-5), (torch.bfloat16, 2.0, 1e-3)])
def test_gpu_matches_reference(backend, n, d, identities, k, p, dtype, factor, atol):
    require_gpu_backend(backend)
    generator = torch.Generator().manual_seed(n + k)
    x, labels = make_batch(n, d, identities, generator, dtype=dtype)
    x, labels = x.cuda(), labels.cuda()
    if refuses_ranks(backend, k, p, lambda: triplet_select(x, labels, k, p, backend=backend)):
        return
    assert_selection_close_to_float64(x, labels, k, p, backend, factor, atol)


@pytest.mark.gpu
def test_gpu_ranks_above_the_limit_move_to_the_reference():
    generator = torch.Generator().manual_seed(40)
    x, labels = make_batch(64, 32, 8, generator)
    x, labels = x.cuda(), labels.cuda()
    with pytest.warns(UserWarning, match="instead of 'cuda'.*at most 32"):
        got = triplet_select(x, labels, k=40, p=3)
    assert_same_selection(got, triplet_select_reference(x, labels, k=40, p=3), rtol=0, atol=0, exact_indices=True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("cuda", "triton"))
def test_gpu_memory_bank_and_ties(backend):
    require_gpu_backend(backend)
    generator = torch.Generator().manual_seed(1)
    x, labels = make_batch(300, 64, 40, generator, values="ties")
    ref, ref_labels = make_batch(20000, 64, 40, generator, values="ties")
    got = triplet_select(x.cuda(), labels.cuda(), 3, 5, ref=ref.cuda(), ref_labels=ref_labels.cuda(), backend=backend)
    expected = triplet_select_reference(x, labels, 3, 5, ref=ref, ref_labels=ref_labels)
    assert_same_selection(got._replace(**{f: t.cpu() for f, t in got._asdict().items()}), expected, 0, 0, exact_indices=True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("cuda", "triton"))
def test_gpu_compile_fullgraph(backend):
    require_gpu_backend(backend)
    generator = torch.Generator().manual_seed(4)
    x, labels = make_batch(64, 128, 16, generator)
    x, labels = x.cuda().requires_grad_(True), labels.cuda()
    assert_compiles_like_eager(
        lambda x, labels: triplet_loss(x, labels, k=2, p=2, backend=backend), x, labels, rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------------------------------------ errors

def _batch():
    return torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(x=torch.randn(6)), ValueError, "x must be 2-D"),
        (dict(x=torch.randn(6, 4).int()), TypeError, "x must be float32"),
        (dict(labels=torch.tensor([0.0, 0, 1, 1, 2, 2])), TypeError, "labels must have an integer dtype"),
        (dict(labels=torch.tensor([0, 0, 1, 1, 2])), ValueError, "labels must hold N=6 labels, got 5"),
        (dict(k=0), ValueError, "k must be >= 1, got 0"),
        (dict(p=1.5), TypeError, "p must be an int"),
        (dict(ref=torch.randn(5, 4)), ValueError, "ref and ref_labels must be given together"),
        (dict(ref=torch.randn(5, 3), ref_labels=torch.zeros(5, dtype=torch.long)), ValueError, "embedding size D=4"),
        (dict(ref=torch.randn(5, 4).double(), ref_labels=torch.zeros(5, dtype=torch.long)), TypeError, "ref must have x's dtype"),
        (dict(labels=torch.zeros(6, dtype=torch.long)), ValueError, "label 0 has no negative"),
        (
            dict(ref=torch.randn(3, 4), ref_labels=torch.tensor([0, 1, 1])),
            ValueError,
            "label 2 has no positive in ref_labels",
        ),
        (dict(backend="gpu"), ValueError, "backend must be one of"),
    ],
)
def test_select_errors(kwargs, error, message):
    x, labels = _batch()
    arguments = dict(x=x, labels=labels) | kwargs
    with pytest.raises(error, match=message):
        triplet_select(**arguments)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(x=torch.randn(1, 4), labels=torch.tensor([0])), ValueError, "at least 2 embeddings"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(margin="0.3"), TypeError, "margin must be a float"),
        (dict(soft=1), TypeError, "soft must be a bool"),
    ],
)
def test_loss_errors(kwargs, error, message):
    x, labels = _batch()
    arguments = dict(x=x, labels=labels) | kwargs
    with pytest.raises(error, match=message):
        triplet_loss(**arguments)


def test_module_errors():
    with pytest.raises(ValueError, match="reduction must be one of"):
        TripletLoss(reduction="max")
    with pytest.raises(ValueError, match="k must be >= 1"):
        TripletLoss(k=0)

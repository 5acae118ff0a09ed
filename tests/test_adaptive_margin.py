"""adaptive_margin_loss: a hand-worked batch, the fused backends against the reference, gradients,
registration, and each error."""

import math

import pytest
import torch
from compile_check import assert_compiles_like_eager
from conftest import cpu_backends, seed_for
from numerics import assert_close_to_float64

import reidfast
from reidfast.losses import AdaptiveMarginLoss
from reidfast.ops import adaptive_margin_loss, adaptive_margin_loss_reference
from reidfast.ops.adaptive_margin import _KERNELS

# Fused backends on CPU tensors here that have this op's kernel (Triton only interpreted).
FUSED = [name for name in cpu_backends() if name != "reference" and name in _KERNELS.implemented()]
FUSED_CPU = [name for name in ("cpu",) if reidfast.available_backends()[name].available]
REDUCTIONS = ("mean", "sum", "balanced")


def make_batch(n, d, identities, generator, dtype=torch.float32):
    labels = torch.randint(0, identities, (n,), generator=generator) * 5 + 11  # any label values
    labels[: 2 * identities] = (torch.arange(2 * identities) % identities) * 5 + 11  # pairs exist
    return torch.randn(n, d, generator=generator).to(dtype), labels[torch.randperm(n, generator=generator)]


# Four points in the plane: identity A at (0, 0) and (1, 0), identity B at (0, 2) and (3, 0).
# Squared distances of the pairs i < j, by hand:
#   (0,1) A-A: 1    (0,2) A-B: 4    (0,3) A-B: 9    (1,2) A-B: 5    (1,3) A-B: 4    (2,3) B-B: 13
# s = (1 + 13) / 2 = 7, d = (4 + 9 + 5 + 4) / 4 = 5.5. With mu = gamma = 1:
#   Mp = 1 - e^-5.5 = 1 - 0.00408677 = 0.99591323,  Mn = log(1 + e^7) = 7.00091147.
# Positive terms: 1 - Mp = 0.00408677, 13 - Mp = 12.00408677.
# Negative terms: Mn - 4 = 3.00091147 (twice), Mn - 9 < 0 -> 0, Mn - 5 = 2.00091147.
HAND_POINTS = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]
HAND_LABELS = [0, 0, 1, 1]
HAND_MP, HAND_MN = 0.99591323, 7.00091147
HAND_POS_TERMS = [0.00408677, 12.00408677]
HAND_NEG_TERMS = [3.00091147, 3.00091147, 0.0, 2.00091147]
HAND_LOSS = {
    "sum": sum(HAND_POS_TERMS) + sum(HAND_NEG_TERMS),
    "mean": (sum(HAND_POS_TERMS) + sum(HAND_NEG_TERMS)) / 6,
    "balanced": sum(HAND_POS_TERMS) / 2 + sum(HAND_NEG_TERMS) / 4,
}
# Gradient of the "sum" loss at x_0 = (0, 0), by hand: dD_0j/dx_0 = 2 (x_0 - x_j). Pair (0,1) is
# above Mp (slope +1): 2 (0 - 1, 0) = (-2, 0). Pair (0,2) is below Mn (slope -1): -2 (0 - 0, 0 - 2)
# = (0, 4). Pair (0,3) is beyond Mn (slope 0). Total (-2, 4).
HAND_GRAD_X0 = [-2.0, 4.0]


@pytest.mark.parametrize("backend", ["reference", *FUSED])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hand_worked_example(backend, reduction):
    x = torch.tensor(HAND_POINTS, requires_grad=True)
    loss, margins = adaptive_margin_loss(
        x, torch.tensor(HAND_LABELS), mu=1.0, gamma=1.0, reduction=reduction, return_margins=True, backend=backend
    )
    assert loss.item() == pytest.approx(HAND_LOSS[reduction], rel=1e-6)
    assert margins.mp.item() == pytest.approx(HAND_MP, rel=1e-6)
    assert margins.mn.item() == pytest.approx(HAND_MN, rel=1e-6)
    assert (margins.s.item(), margins.d.item()) == pytest.approx((7.0, 5.5), rel=1e-6)
    if reduction == "sum":
        (grad,) = torch.autograd.grad(loss, x)
        assert grad[0].tolist() == pytest.approx(HAND_GRAD_X0, rel=1e-6)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("n, d, identities", [(5, 3, 2), (37, 17, 6), (130, 65, 20)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mu, gamma", [(8.0, 2.1), (0.05, 0.3)])
def test_fused_matches_reference(backend, n, d, identities, reduction, mu, gamma):
    generator = torch.Generator().manual_seed(seed_for(backend, n, reduction, mu))
    x, labels = make_batch(n, d, identities, generator)
    x = (x * 0.3).requires_grad_(True)  # distances around the margins: both hinge branches occur
    got, got_margins = adaptive_margin_loss(x, labels, mu, gamma, reduction, return_margins=True, backend=backend)
    expected, expected_margins = adaptive_margin_loss_reference(x, labels, mu, gamma, reduction, return_margins=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(got_margins, expected_margins):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    (grad_got,) = torch.autograd.grad(got, x)
    (grad_expected,) = torch.autograd.grad(expected, x)
    # A gradient element sums N terms of the gradients' scale ("sum": up to tens), so float32
    # rounding is absolute at that scale; elements near 0 are compared to it.
    scale = max(1.0, grad_expected.abs().max().item())
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("backend", FUSED_CPU)
def test_tiled_path_matches_reference(backend):
    # N^2 above the kernel's tile size: the triangle is visited in several tiles, twice.
    generator = torch.Generator().manual_seed(17)
    x, labels = make_batch(1500, 4, 300, generator)
    x.requires_grad_(True)
    got = adaptive_margin_loss(x, labels, reduction="balanced", backend=backend)
    expected = adaptive_margin_loss_reference(x, labels, reduction="balanced")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(expected, x)[0], rtol=1e-4, atol=1e-7)


def assert_loss_close_to_float64(x, labels, reduction, backend, factor, atol):
    """adaptive_margin_loss of `backend` on x (any float dtype) by the float64 rule
    (tests/numerics.py): the loss and its gradient against the reference in float64, relative to
    the reference's own error in x's dtype."""

    def loss_and_grad(inputs, loss_fn):
        leaf = inputs.detach().clone().requires_grad_()
        loss = loss_fn(leaf)
        return loss, torch.autograd.grad(loss, leaf)[0]

    got = loss_and_grad(x, lambda t: adaptive_margin_loss(t, labels, reduction=reduction, backend=backend))
    baseline = loss_and_grad(x, lambda t: adaptive_margin_loss_reference(t, labels, reduction=reduction))
    exact = loss_and_grad(x.double(), lambda t: adaptive_margin_loss_reference(t, labels, reduction=reduction))
    assert got[0].dtype == x.dtype and got[1].dtype == x.dtype
    assert_close_to_float64(got, baseline, exact, factor=factor, atol=atol, names=("loss", "grad_x"))


@pytest.mark.parametrize("backend", FUSED_CPU)
@pytest.mark.parametrize(
    "dtype, factor, atol", [(torch.float16, 2.0, 1e-6), (torch.bfloat16, 2.0, 1e-6), (torch.float64, 2.0, 1e-12)]
)
def test_dtypes(backend, dtype, factor, atol):
    generator = torch.Generator().manual_seed(3)
    x, labels = make_batch(40, 16, 6, generator, dtype=dtype)
    assert_loss_close_to_float64(x, labels, "mean", backend, factor, atol)


@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_large_gamma_s_does_not_overflow(backend):
    x = torch.tensor(HAND_POINTS) * 100.0  # s = 70000: exp(gamma * s) overflows float64
    loss, margins = adaptive_margin_loss(
        x, torch.tensor(HAND_LABELS), gamma=50.0, reduction="sum", return_margins=True, backend=backend
    )
    assert math.isfinite(loss.item())
    assert margins.mn.item() == pytest.approx(70000.0, rel=1e-6)  # log(1 + e^(g s)) / g -> s


def frozen_margin_loss(x, labels, mp, mn, reduction):
    """The loss with the margins held fixed, pair by pair in float64: the function whose gradient
    the op returns (the paper's Eq. 13-14 treat the margins as constants)."""
    pos_terms, neg_terms = [], []
    for i in range(x.shape[0]):
        for j in range(i + 1, x.shape[0]):
            dist = max(float(((x[i] - x[j]) ** 2).sum()), 1e-12)
            if labels[i] == labels[j]:
                pos_terms.append(max(dist - mp, 0.0))
            else:
                neg_terms.append(max(mn - dist, 0.0))
    if reduction == "balanced":
        return sum(pos_terms) / len(pos_terms) + sum(neg_terms) / len(neg_terms)
    total = sum(pos_terms) + sum(neg_terms)
    return total / (len(pos_terms) + len(neg_terms)) if reduction == "mean" else total


@pytest.mark.parametrize("backend", ["reference", *FUSED_CPU])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_by_finite_differences(backend, reduction):
    """gradcheck's test, with the margins detached as specified: central differences of the
    frozen-margin loss along random directions against the op's gradient, in float64."""
    generator = torch.Generator().manual_seed(5)
    x, labels = make_batch(9, 4, 3, generator, dtype=torch.float64)
    x = (x * 0.3).requires_grad_(True)
    loss, margins = adaptive_margin_loss(x, labels, reduction=reduction, return_margins=True, backend=backend)
    (grad,) = torch.autograd.grad(loss, x)
    mp, mn = margins.mp.item(), margins.mn.item()
    eps = 1e-6
    for _ in range(4):
        direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        plus = frozen_margin_loss(x.detach() + eps * direction, labels, mp, mn, reduction)
        minus = frozen_margin_loss(x.detach() - eps * direction, labels, mp, mn, reduction)
        assert (grad * direction).sum().item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("backend", FUSED)
def test_backward_scales_accumulates_and_retains(backend):
    """The upstream gradient scales the kept one; with a retained graph a second backward gives
    the same gradient again (accumulated into x.grad), so the kept gradient is never consumed."""
    generator = torch.Generator().manual_seed(6)
    x, labels = make_batch(11, 5, 3, generator)
    x.requires_grad_(True)
    (expected,) = torch.autograd.grad(adaptive_margin_loss_reference(x, labels), x)
    loss = adaptive_margin_loss(x, labels, backend=backend)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-7)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, 2 * expected, rtol=1e-5, atol=1e-7)
    (2.5 * loss).backward()
    torch.testing.assert_close(x.grad, 4.5 * expected, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not FUSED_CPU, reason="the extension is not built")
@pytest.mark.parametrize("compute_grad", (True, False))
def test_opcheck(compute_grad):
    generator = torch.Generator().manual_seed(2)
    x, labels = make_batch(16, 8, 4, generator)
    x.requires_grad_(compute_grad)
    torch.library.opcheck(
        torch.ops.reidfast.adaptive_margin_forward.default, (x, labels.long(), 8.0, 2.1, "balanced", compute_grad)
    )


@pytest.mark.parametrize("backend", ["reference", *FUSED_CPU])
def test_compile_fullgraph(backend):
    generator = torch.Generator().manual_seed(4)
    x, labels = make_batch(24, 10, 4, generator)
    x.requires_grad_(True)

    def loss_fn(x, labels):
        return adaptive_margin_loss(x, labels, reduction="balanced", backend=backend)

    assert_compiles_like_eager(loss_fn, x, labels, inductor=backend != "reference")


def test_module_keeps_the_last_margins():
    generator = torch.Generator().manual_seed(6)
    x, labels = make_batch(20, 5, 4, generator)
    module = AdaptiveMarginLoss(mu=4.0, gamma=1.5, reduction="sum")
    assert module.last_margins is None
    loss = module(x, labels)
    expected, margins = adaptive_margin_loss(x, labels, 4.0, 1.5, "sum", return_margins=True)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(module.last_margins, margins):
        torch.testing.assert_close(got, want)
    assert "reduction='sum'" in repr(module)


# --------------------------------------------------------------------------------------------- GPU


def gpu_batch(backend, n, d, dtype):
    status = reidfast.available_backends()[backend]
    if "cuda" not in status.devices:
        pytest.fail(f"backend {backend!r} is not available on this GPU machine: {status.reason}")
    generator = torch.Generator().manual_seed(n)
    x, labels = make_batch(n, d, max(2, n // 4), generator, dtype=dtype)
    return (x * 0.05).cuda(), labels.cuda()  # distances around the margins: both hinge branches occur


GPU_SHAPES = [(7, 5), (1024, 2048), (600, 800)]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("n, d", GPU_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gpu_matches_reference(backend, n, d, reduction):
    x, labels = gpu_batch(backend, n, d, torch.float32)
    x.requires_grad_(True)
    got = adaptive_margin_loss(x, labels, reduction=reduction, backend=backend)
    expected = adaptive_margin_loss_reference(x, labels, reduction=reduction)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(expected, x)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("n, d", GPU_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype, factor, atol", [(torch.bfloat16, 2.0, 1e-7)])
def test_gpu_low_precision(backend, n, d, reduction, dtype, factor, atol):
    x, labels = gpu_batch(backend, n, d, dtype)
    assert_loss_close_to_float64(x, labels, reduction, backend, factor, atol)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(x=torch.randn(4)), ValueError, "x must be 2-D"),
        (dict(labels=torch.tensor([0.0, 0, 1, 1])), TypeError, "labels must have an integer dtype"),
        (dict(labels=torch.tensor([0, 0, 1])), ValueError, "labels must hold N=4 labels, got 3"),
        (dict(labels=torch.tensor([0, 1, 2, 3])), ValueError, "no positive pair.*identity-balanced sampler"),
        (dict(labels=torch.tensor([5, 5, 5, 5])), ValueError, "no negative pair \\(every label is 5\\)"),
        (dict(mu=0.0), ValueError, "mu must be > 0, got 0.0"),
        (dict(gamma=-1.0), ValueError, "gamma must be > 0, got -1.0"),
        (dict(gamma="2"), TypeError, "gamma must be a float"),
        (dict(reduction="none"), ValueError, "reduction must be one of"),
        (dict(return_margins=1), TypeError, "return_margins must be a bool"),
        (dict(backend="gpu"), ValueError, "backend must be one of"),
    ],
)
def test_errors(kwargs, error, message):
    arguments = dict(x=torch.randn(4, 3), labels=torch.tensor([0, 0, 1, 1])) | kwargs
    with pytest.raises(error, match=message):
        adaptive_margin_loss(**arguments)


def test_module_errors():
    with pytest.raises(ValueError, match="mu must be > 0"):
        AdaptiveMarginLoss(mu=-1.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        AdaptiveMarginLoss(reduction="max")

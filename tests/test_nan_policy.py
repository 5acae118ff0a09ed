"""The NaN policy, one for every op and backend: a NaN (or an infinity) in the input gives a NaN
loss or output where the reference has one, and NaN in the gradient exactly where the reference's
gradient has NaN. A diverging run must look like one, never like a converged run."""

import pytest
import torch

from conftest import cpu_backends
from reidfast.ops import adaptive_margin_loss, pyramid_pool, triplet_loss, triplet_select

BACKENDS = [name for name in cpu_backends() if name != "reference"]
LABELS = torch.arange(6).repeat_interleave(4)  # 6 identities x 4 images
BAD_VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def poisoned(shape, where, value, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator)
    x[where] = value
    return x.requires_grad_(True)


def outputs_and_gradient(fn, x, backend):
    """The op's outputs (a tuple of tensors) and the gradient of their weighted sum."""
    x = x.detach().clone().requires_grad_(True)
    outputs = fn(x, backend)
    differentiable = [out for out in outputs if out.is_floating_point()]
    weights = [torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape) for out in differentiable]
    total = sum((w * out).sum() for w, out in zip(weights, differentiable))
    (grad,) = torch.autograd.grad(total, x)
    return outputs, grad


def assert_same_nan_pattern(got, expected, what):
    assert got.shape == expected.shape, what
    if not got.is_floating_point():
        assert torch.equal(got, expected), f"{what}: indices differ"
        return
    nan_got, nan_expected = torch.isnan(got), torch.isnan(expected)
    assert torch.equal(nan_got, nan_expected), (
        f"{what}: NaN at {nan_got.nonzero().flatten().tolist()[:12]}, the reference has NaN at "
        f"{nan_expected.nonzero().flatten().tolist()[:12]}"
    )
    finite = ~nan_expected
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-4, atol=1e-5, msg=what)


OPS = {
    "pyramid_pool": (lambda x, backend: (pyramid_pool(x, 3, backend=backend),), (2, 3, 7, 2), (1, 2, 3, 1)),
    "triplet_select": (lambda x, backend: tuple(triplet_select(x, LABELS, k=2, p=2, backend=backend)), (24, 6), (5, 2)),
    "triplet_loss": (lambda x, backend: (triplet_loss(x, LABELS, backend=backend),), (24, 6), (5, 2)),
    "adaptive_margin_loss": (lambda x, backend: (adaptive_margin_loss(x, LABELS, backend=backend),), (24, 6), (5, 2)),
}


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_non_finite_input_gives_the_references_nan_pattern(op, backend, value):
    fn, shape, where = OPS[op]
    x = poisoned(shape, where, BAD_VALUES[value], seed=len(op))
    got, grad_got = outputs_and_gradient(fn, x, backend)
    expected, grad_expected = outputs_and_gradient(fn, x, "reference")
    for index, (g, e) in enumerate(zip(got, expected)):
        assert_same_nan_pattern(g, e, f"{op} output {index}")
    assert_same_nan_pattern(grad_got, grad_expected, f"{op} gradient")


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_a_nan_embedding_makes_the_losses_nan(backend):
    x = poisoned((24, 6), (5, 2), float("nan"), seed=3)
    assert torch.isnan(triplet_loss(x, LABELS, backend=backend))
    assert torch.isnan(adaptive_margin_loss(x, LABELS, backend=backend))

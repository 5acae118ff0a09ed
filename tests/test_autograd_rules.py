"""Autograd rules every fused op keeps: double backward is refused with a clear error, and the
reference backend (plain PyTorch) still gives second derivatives."""

import pytest
import torch

from conftest import cpu_backends
from reidfast.ops import adaptive_margin_loss, pyramid_pool, triplet_loss

FUSED = [name for name in cpu_backends() if name != "reference"]
LABELS = torch.arange(4).repeat_interleave(3)  # 4 identities x 3 images

# Each op as a scalar function of one float64 (float32 for Triton) input, on a backend.
OPS = {
    "pyramid_pool": (lambda x, backend: pyramid_pool(x, 3, backend=backend).pow(2).sum(), (2, 3, 6, 2)),
    "triplet_select": (lambda x, backend: triplet_loss(x, LABELS, soft=True, backend=backend), (12, 5)),
    "adaptive_margin_loss": (lambda x, backend: adaptive_margin_loss(x, LABELS, backend=backend), (12, 5)),
}


def make_input(shape, backend, seed):
    dtype = torch.float32 if backend == "triton" else torch.float64
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype).requires_grad_(True)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("op", OPS)
def test_double_backward_is_refused(op, backend):
    loss_of, shape = OPS[op]
    x = make_input(shape, backend, seed=1)
    with pytest.raises(RuntimeError, match=rf"{op}: double backward \(create_graph=True\) is not supported"):
        torch.autograd.grad(loss_of(x, backend), x, create_graph=True)
    (grad,) = torch.autograd.grad(loss_of(x, backend), x)  # first order still works
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("op", OPS)
def test_reference_has_second_derivatives(op):
    loss_of, shape = OPS[op]
    x = make_input(shape, "reference", seed=2)
    (grad,) = torch.autograd.grad(loss_of(x, "reference"), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), x)
    assert second.shape == x.shape and torch.isfinite(second).all()

"""Which devices the Triton kernels serve (reidfast.kernels.supported), and that they run on their
tensors' GPU, not on the current one: inputs on cuda:1 while cuda:0 is current give the
reference's results on cuda:1, gradients included, and leave cuda:0 current. (Triton launches on
the current device and its current stream; kernels/_launch.py's run_launch switches to the
tensors' device for each launch.)"""

import pytest

pytest.importorskip("triton")
import torch  # noqa: E402

from reidfast.kernels import supported  # noqa: E402
from reidfast.ops import adaptive_margin_loss, pyramid_pool, triplet_select  # noqa: E402

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")

SECOND = torch.device("cuda", 1)


def test_supported_devices():
    for op in ("pyramid_pool", "triplet_select", "adaptive_margin"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            assert supported(op, (8, 0), dtype) is None and supported(op, (9, 0), dtype) is None
            assert "sm_70" in supported(op, (7, 0), dtype)
    assert supported("pyramid_pool", (7, 5), torch.bfloat16) is None
    assert supported("triplet_select", (7, 5), torch.float32) is None
    assert "Turing" in supported("triplet_select", (7, 5), torch.bfloat16)
    assert "Turing" in supported("adaptive_margin", (7, 5), torch.float32)
    assert "float32 only" in supported("triplet_select", (7, 5), torch.float16)


@pytest.fixture
def _first_device_current():
    previous = torch.cuda.current_device()
    torch.cuda.set_device(0)
    yield
    assert torch.cuda.current_device() == 0, "an op left another device current"
    torch.cuda.set_device(previous)


def _forward_backward(fn, x):
    """(fn(x), dfn(x)/dx for a fixed random cotangent), on x's device."""
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    cotangent = torch.randn(out.shape, generator=torch.Generator(x.device).manual_seed(1), device=x.device)
    (grad,) = torch.autograd.grad(out, x, cotangent)
    assert out.device == SECOND and grad.device == SECOND
    return out.detach(), grad


def _check_against_reference(op, x, rtol, atol):
    got = _forward_backward(lambda t: op(t, "triton"), x)
    want = _forward_backward(lambda t: op(t, "reference"), x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.gpu
@two_gpus
@pytest.mark.usefixtures("_first_device_current")
def test_pyramid_pool_on_the_second_device():
    x = torch.randn(4, 70, 24, 8, device=SECOND)
    _check_against_reference(lambda t, backend: pyramid_pool(t, 6, backend=backend), x, 1e-5, 1e-6)


@pytest.mark.gpu
@two_gpus
@pytest.mark.usefixtures("_first_device_current")
def test_triplet_select_on_the_second_device():
    labels = torch.arange(64, device=SECOND) // 4
    x = torch.randn(64, 128, device=SECOND)

    def op(t, backend):
        selection = triplet_select(t, labels, k=2, p=3, backend=backend)
        return torch.stack([selection.pos_dist, selection.neg_dist])

    _check_against_reference(op, x, 1e-4, 1e-5)


@pytest.mark.gpu
@two_gpus
@pytest.mark.usefixtures("_first_device_current")
def test_adaptive_margin_loss_on_the_second_device():
    labels = torch.arange(64, device=SECOND) // 4
    x = 0.3 * torch.randn(64, 128, device=SECOND)
    _check_against_reference(lambda t, backend: adaptive_margin_loss(t, labels, backend=backend), x, 1e-4, 1e-5)

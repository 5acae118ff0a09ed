"""adaptive_margin_loss on every available backend against the reference, in one run.

Implementations timed per case:
  reidfast:<backend>   the fused op on each backend available for the device
  reference            the specification: the whole N x N distance matrix, its upper triangle
                       gathered, masked and reduced (eager)
  reference-compiled   the same under torch.compile
Passes: "forward" (no gradient) and "forward+backward". Batches are P identities x 4 images.
"""

import pytest
import torch
from benchutil import devices

import reidfast
from reidfast.ops import adaptive_margin_loss
from reidfast.ops.adaptive_margin import _KERNELS

IDENTITY_SIZE = 4
CASES = [(device, n, d) for device in ("cpu", "cuda") for n in (64, 256, 1024, 4096) for d in (128, 800, 2048)]
LARGEST_N = 4096  # its cases are marked large: the smoke run leaves them out (bench/conftest.py)


def implementations(device):
    fused = [
        name for name, status in reidfast.available_backends().items()
        if name != "reference" and name in _KERNELS.implemented() and device in status.devices
        and not (name == "triton" and device == "cpu")
    ]
    return [f"reidfast:{name}" for name in fused] + ["reference", "reference-compiled"]


def make_loss(impl):
    backend = impl.split(":", 1)[1] if impl.startswith("reidfast:") else "reference"

    def loss(x, labels):
        return adaptive_margin_loss(x, labels, backend=backend)

    return torch.compile(loss) if impl == "reference-compiled" else loss


def make_inputs(device, n, d, requires_grad):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(n, d, generator=generator) / d**0.5).to(device).requires_grad_(requires_grad)
    return x, (torch.arange(n) // IDENTITY_SIZE).to(device)


PARAMS = [
    pytest.param(
        device, n, d, impl, id=f"{device}-N{n}-D{d}-{impl}", marks=[pytest.mark.large] if n == LARGEST_N else []
    )
    for device, n, d in CASES
    if device in devices()
    for impl in implementations(device)
]


@pytest.mark.parametrize("device, n, d, impl", PARAMS)
def test_forward(benchmark, timed, device, n, d, impl):
    benchmark.group = f"adaptive_margin_loss forward {device} N={n} D={d} float32"
    x, labels = make_inputs(device, n, d, requires_grad=False)
    loss = make_loss(impl)
    # Every implementation computes the same loss; a faster wrong one would be no result.
    torch.testing.assert_close(loss(x, labels), adaptive_margin_loss(x, labels, backend="reference"), rtol=1e-4, atol=1e-6)

    def fn():
        with torch.no_grad():
            return loss(x, labels)

    timed(fn, device, op="adaptive_margin_loss", impl=impl, passname="forward", shape=[n, d], dtype="float32")


@pytest.mark.parametrize("device, n, d, impl", PARAMS)
def test_forward_backward(benchmark, timed, device, n, d, impl):
    benchmark.group = f"adaptive_margin_loss forward+backward {device} N={n} D={d} float32"
    x, labels = make_inputs(device, n, d, requires_grad=True)
    loss = make_loss(impl)

    def fn():
        x.grad = None
        loss(x, labels).backward()

    timed(fn, device, op="adaptive_margin_loss", impl=impl, passname="forward+backward", shape=[n, d], dtype="float32")

"""PyramidHead (all branches at once) against the per-branch head, in one run.

Implementations timed per case:
  reidfast:<backend>   PyramidHead: one pyramid_pool call (on each backend available for the
                       device) and batched per-branch layers
  reference            PyramidHeadReference, the per-branch head as the authors' code runs it: each
                       of the 21 windows sliced, pooled (amax + mean) and passed through its own
                       Conv2d + BatchNorm2d + ReLU, Dropout + Linear, one branch at a time (eager)
The per-branch head is not timed under torch.compile: compiling its 21 branches takes minutes per
case on a 2-core CPU.
Passes: "forward" (inference: eval mode, no gradient) and "forward+backward" (train mode: BatchNorm
on batch statistics, dropout; gradients of the input and of every parameter).
Both heads hold the same weights and have the default configuration (21 branches, D = 128, dropout
0.2) with Market-1501's 751 training identities. On CUDA the large case runs under bfloat16
autocast, as mixed-precision training does; the head's parameters stay float32.
"""

import pytest
import torch
from benchutil import devices

import reidfast
from reidfast.nn import PyramidHead, PyramidHeadReference

NUM_CLASSES = 751

# (device, shape, autocast dtype or None): ResNet-50 at 384x128 gives 2048 x 24 x 8; plus a small map.
CASES = [
    ("cpu", (32, 2048, 24, 8), None),
    ("cpu", (8, 256, 12, 4), None),
    ("cuda", (64, 2048, 24, 8), torch.bfloat16),
    ("cuda", (8, 256, 12, 4), None),
]


def implementations(device):
    # The Triton interpreter (CPU tensors) is a testing aid, not something to time.
    fused = [
        name for name, status in reidfast.available_backends().items()
        if name != "reference" and device in status.devices and not (name == "triton" and device == "cpu")
    ]
    return [f"reidfast:{name}" for name in fused] + ["reference"]


def make_head(impl, channels, device):
    """The head `impl` names, on `device`, with the weights every implementation of a case shares."""
    torch.manual_seed(0)
    reference = PyramidHeadReference(in_channels=channels, num_classes=NUM_CLASSES).to(device)
    if impl == "reference":
        return reference
    head = PyramidHead(in_channels=channels, num_classes=NUM_CLASSES, backend=impl.split(":", 1)[1]).to(device)
    head.load_reference(reference)
    return head


def _dtype_name(autocast):
    return "float32" if autocast is None else f"{str(autocast)[6:]}-autocast"


PARAMS = [
    pytest.param(
        device, shape, autocast, impl, id=f"{device}-{'x'.join(map(str, shape))}-{_dtype_name(autocast)}-{impl}"
    )
    for device, shape, autocast in CASES
    if device in devices()
    for impl in implementations(device)
]


def _group(passname, device, shape, autocast):
    return f"pyramid_head {passname} {device} {list(shape)} {_dtype_name(autocast)}"


def _autocast(device, autocast):
    return torch.autocast(device, dtype=autocast, enabled=autocast is not None)


@pytest.mark.parametrize("device, shape, autocast, impl", PARAMS)
def test_forward(benchmark, timed, device, shape, autocast, impl):
    benchmark.group = _group("forward", device, shape, autocast)
    head = make_head(impl, shape[1], device)
    head.eval()
    x = torch.randn(shape, device=device, dtype=autocast or torch.float32)

    def fn():
        with torch.no_grad(), _autocast(device, autocast):
            return head(x)

    timed(fn, device, op="pyramid_head", impl=impl, passname="forward", shape=list(shape),
          dtype=_dtype_name(autocast), num_classes=NUM_CLASSES)


@pytest.mark.parametrize("device, shape, autocast, impl", PARAMS)
def test_forward_backward(benchmark, timed, device, shape, autocast, impl):
    benchmark.group = _group("forward+backward", device, shape, autocast)
    head = make_head(impl, shape[1], device)
    head.train()
    x = torch.randn(shape, device=device, dtype=autocast or torch.float32, requires_grad=True)
    # Output gradients in the dtypes the outputs have under this autocast, made before the timing.
    with _autocast(device, autocast):
        probe = head(x)
    grads = [torch.randn_like(probe.features), torch.randn_like(probe.logits)]
    del probe

    def fn():
        x.grad = None
        head.zero_grad(set_to_none=True)
        with _autocast(device, autocast):
            out = head(x)
        torch.autograd.backward([out.features, out.logits], grads)

    timed(fn, device, op="pyramid_head", impl=impl, passname="forward+backward", shape=list(shape),
          dtype=_dtype_name(autocast), num_classes=NUM_CLASSES)

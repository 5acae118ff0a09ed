"""pyramid_pool: every available backend against plain-PyTorch implementations, in one run.

Implementations timed per case:
  reidfast:<backend>   the fused op on each backend available for the device
  reference            the specification, one window at a time (eager)
  reference-compiled   the same under torch.compile
  stripes              the best plain-PyTorch formulation: each stripe reduced once (amax, sum),
                       windows combined from the stripe statistics (eager)
  stripes-compiled     the same under torch.compile
  read-x               x.sum(): one plain read of x, the memory floor of the forward pass
  copy-x               y.copy_(x): the device's copy bandwidth, which the forward pass is held to
                       (bytes moved: x read once plus the output written)
Passes: "forward" (inference: no gradient, so no argmax is kept) and "forward+backward".
"""

import pytest
import torch
from benchutil import devices

import reidfast
from reidfast.ops import pyramid_pool, pyramid_pool_reference
from reidfast.ops.pyramid_pool import pyramid_pool_from_stripes

# (device, shape, dtype): ResNet-50 at 384x128 gives 2048 x 24 x 8; plus a small map.
CASES = [
    ("cpu", (32, 2048, 24, 8), torch.float32),
    ("cpu", (8, 256, 12, 4), torch.float32),
    ("cuda", (64, 2048, 24, 8), torch.float32),
    ("cuda", (64, 2048, 24, 8), torch.bfloat16),
    ("cuda", (8, 256, 12, 4), torch.float32),
]
NUM_PARTS = 6


def implementations(device):
    # The Triton interpreter (CPU tensors) is a testing aid, not something to time.
    fused = [
        name for name, status in reidfast.available_backends().items()
        if name != "reference" and device in status.devices and not (name == "triton" and device == "cpu")
    ]
    return [f"reidfast:{name}" for name in fused] + [
        "reference", "reference-compiled", "stripes", "stripes-compiled", "read-x", "copy-x"
    ]


def make_pool(impl):
    if impl.startswith("reidfast:"):
        backend = impl.split(":", 1)[1]
        return lambda x: pyramid_pool(x, NUM_PARTS, backend=backend)
    plain = pyramid_pool_reference if impl.startswith("reference") else pyramid_pool_from_stripes
    pool = lambda x: plain(x, NUM_PARTS)  # noqa: E731
    return torch.compile(pool) if impl.endswith("-compiled") else pool


PARAMS = [
    pytest.param(device, shape, dtype, impl, id=f"{device}-{'x'.join(map(str, shape))}-{str(dtype)[6:]}-{impl}")
    for device, shape, dtype in CASES
    if device in devices()
    for impl in implementations(device)
]


def _group(passname, device, shape, dtype):
    return f"pyramid_pool {passname} {device} {list(shape)} {str(dtype)[6:]}"


@pytest.mark.parametrize("device, shape, dtype, impl", PARAMS)
def test_forward(benchmark, timed, device, shape, dtype, impl):
    benchmark.group = _group("forward", device, shape, dtype)
    x = torch.randn(shape, device=device, dtype=dtype)
    num_windows = NUM_PARTS * (NUM_PARTS + 1) // 2
    bytes_moved = x.nbytes + shape[0] * num_windows * shape[1] * x.element_size()
    if impl == "read-x":
        fn = x.sum
    elif impl == "copy-x":
        y = torch.empty_like(x)
        bytes_moved = 2 * x.nbytes

        def fn():
            y.copy_(x)
    else:
        pool = make_pool(impl)

        def fn():
            with torch.no_grad():
                return pool(x)

    timed(fn, device, op="pyramid_pool", impl=impl, passname="forward", shape=list(shape), dtype=str(dtype)[6:],
          bytes_moved=bytes_moved)


@pytest.mark.parametrize("device, shape, dtype, impl", [p for p in PARAMS if p.values[3] not in ("read-x", "copy-x")])
def test_forward_backward(benchmark, timed, device, shape, dtype, impl):
    benchmark.group = _group("forward+backward", device, shape, dtype)
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape[0], NUM_PARTS * (NUM_PARTS + 1) // 2, shape[1], device=device, dtype=dtype)
    pool = make_pool(impl)

    def fn():
        x.grad = None
        pool(x).backward(grad)

    timed(fn, device, op="pyramid_pool", impl=impl, passname="forward+backward", shape=list(shape), dtype=str(dtype)[6:])

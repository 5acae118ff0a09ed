"""Every GPU kernel can be captured in a CUDA graph: no host synchronisation, no data-dependent
output size, no launch outside the current stream.

Each registered op (the "cuda" kernels and the "triton" ones) is captured once on static inputs,
replayed after fresh inputs are copied into them, and compared with an eager call on those inputs
(bit for bit: the forwards are deterministic, and so are these backwards). The ops are called
through torch.ops.reidfast directly: the public functions check the labels on the host first
(which a capture cannot contain; they skip it under torch.compile).
"""

import pytest
import torch

from reidfast import _extension
from reidfast.ops.pyramid_pool import pyramid_windows

pytestmark = pytest.mark.gpu

DTYPES = (torch.float32, torch.bfloat16)
NUM_PARTS = 6
STARTS, LENGTHS = (list(column) for column in zip(*pyramid_windows(NUM_PARTS)))


def registered(op: str, backend: str) -> bool:
    """Whether reidfast::op (its _triton variant for backend 'triton') has a CUDA kernel."""
    if backend == "cuda":
        return _extension.has_kernel(op, "CUDA")
    return hasattr(torch.ops.reidfast, f"{op}_triton")


def operator(op: str, backend: str):
    name = op if backend == "cuda" else f"{op}_triton"
    if not registered(op, backend):
        pytest.skip(f"reidfast::{name} is not registered in this build")
    return getattr(torch.ops.reidfast, name)


def generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def assert_graph_replays(op, make_args, seeds=(11, 12)):
    """Captures op(*make_args(10)) and checks each replay on make_args(seed) against eager op.

    make_args(seed) gives the op's arguments: tensors (copied into the captured ones before a
    replay; the same tensor twice stays one tensor) and plain values (the same for every seed).
    """
    static = make_args(10)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # first calls outside the capture: lazy initialisation, compiles
        for _ in range(2):
            op(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = op(*static)
    for seed in seeds:
        fresh = make_args(seed)
        for into, value in zip(static, fresh):
            if isinstance(into, torch.Tensor):
                into.copy_(value)
        graph.replay()
        expected = op(*fresh)
        for got, want in zip(captured, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def identities(n: int, per_identity: int, seed: int) -> torch.Tensor:
    """n labels, per_identity images per identity, shuffled."""
    labels = torch.arange(n, device="cuda") // per_identity
    return labels[torch.randperm(n, device="cuda", generator=generator(seed))]


# ---------------------------------------------------------------------------------- pyramid_pool


@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", (False, True))
def test_pyramid_pool_forward(backend, dtype, channels_last):
    op = operator("pyramid_pool_forward", backend)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def make_args(seed):
        x = torch.randn(4, 96, 24, 8, device="cuda", generator=generator(seed)).to(dtype)
        return [x.contiguous(memory_format=memory_format), NUM_PARTS, STARTS, LENGTHS, "max+avg", True]

    assert_graph_replays(op, make_args)


@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_pyramid_pool_backward(backend, dtype):
    forward = operator("pyramid_pool_forward", backend)
    op = operator("pyramid_pool_backward", backend)

    def make_args(seed):
        x = torch.randn(4, 96, 24, 8, device="cuda", generator=generator(seed)).to(dtype)
        out, argmax = forward(x, NUM_PARTS, STARTS, LENGTHS, "max+avg", True)
        grad_out = torch.randn(out.shape, device="cuda", generator=generator(seed + 100)).to(dtype)
        return [grad_out, argmax, NUM_PARTS, STARTS, LENGTHS, "max+avg", 24, 8, False]

    assert_graph_replays(lambda *args: (op(*args),), make_args)


# -------------------------------------------------------------------------------- triplet_select


# (N, M or None for the batch against itself, k, p, squared)
SELECTIONS = [(64, None, 1, 1, False), (100, 5000, 2, 3, True)]


def selection_args(seed, dtype, n, m, k, p, squared):
    """triplet_select_forward's arguments: x [n, 128] against itself, or against a bank [m, 128]."""
    x = torch.randn(n, 128, device="cuda", generator=generator(seed)).to(dtype)
    labels = identities(n, 4, seed)
    if m is None:
        return [x, labels, x, labels, True, k, p, squared]
    ref = torch.randn(m, 128, device="cuda", generator=generator(seed + 100)).to(dtype)
    return [x, labels, ref, identities(m, 10, seed + 200) % (n // 4), False, k, p, squared]


@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, m, k, p, squared", SELECTIONS)
def test_triplet_select_forward(backend, dtype, n, m, k, p, squared):
    op = operator("triplet_select_forward", backend)
    assert_graph_replays(op, lambda seed: selection_args(seed, dtype, n, m, k, p, squared))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, m, k, p, squared", SELECTIONS)
@pytest.mark.parametrize("ref_grad", (False, True))
def test_triplet_select_backward(dtype, n, m, k, p, squared, ref_grad):
    forward = operator("triplet_select_forward", "cuda")
    op = operator("triplet_select_backward", "cuda")

    def make_args(seed):
        args = selection_args(seed, dtype, n, m, k, p, squared)
        x, ref, self_reference = args[0], args[2], args[4]
        pos_dist, neg_dist, pos_index, neg_index = forward(*args)
        grads = torch.randn(2, n, device="cuda", generator=generator(seed + 300)).to(dtype)
        return [grads[0], grads[1], x, ref, pos_dist, neg_dist, pos_index, neg_index, self_reference, squared, ref_grad]

    assert_graph_replays(op, make_args)


# -------------------------------------------------------------------------- adaptive_margin_loss


@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ("mean", "balanced"))
@pytest.mark.parametrize("compute_grad", (False, True))
def test_adaptive_margin_forward(backend, dtype, reduction, compute_grad):
    op = operator("adaptive_margin_forward", backend)

    def make_args(seed):
        x = torch.randn(96, 128, device="cuda", generator=generator(seed)).to(dtype)
        return [x, identities(96, 4, seed), 8.0, 2.1, reduction, compute_grad]

    assert_graph_replays(op, make_args)

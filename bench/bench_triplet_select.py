"""triplet_loss (batch-hard: hinge, k = p = 1, margin 0.3) on every available backend against the
reference, in one run.

Implementations timed per case:
  reidfast:<backend>   triplet_loss on the fused selection of each backend available for the device
  reference            the specification: the full N x M distance matrix, masked and sorted (eager)
  reference-compiled   the same under torch.compile
  pml                  pytorch-metric-learning's BatchHardMiner + TripletMarginLoss computing the
                       same loss, when installed (`pip install pytorch-metric-learning`)
Passes: "forward" (no gradient) and "forward+backward". Cases with `bank` select each of the N
anchors against a memory bank of that many embeddings instead of the batch itself.
"""

import importlib.util

import pytest
import torch
from benchutil import devices

import reidfast
from reidfast.ops import triplet_loss

MARGIN = 0.3
IDENTITY_SIZE = 4  # P x K batches with K = 4 images per identity
# (device, N, D, bank size or 0)
CASES = [
    (device, n, d, 0) for device in ("cpu", "cuda") for n in (64, 256, 1024, 4096) for d in (128, 2048)
] + [("cuda", 1024, 2048, 65536)]
LARGEST_N = 4096  # its cases are marked large: the smoke run leaves them out (bench/conftest.py)


def implementations(device, bank):
    fused = [
        name for name, status in reidfast.available_backends().items()
        if name != "reference" and device in status.devices and not (name == "triton" and device == "cpu")
    ]
    names = [f"reidfast:{name}" for name in fused] + ["reference", "reference-compiled"]
    if importlib.util.find_spec("pytorch_metric_learning") is not None and not bank:
        names.append("pml")
    return names


def make_loss(impl):
    if impl == "pml":
        # Configured to compute the same loss: Euclidean distances of the raw embeddings (pml
        # normalises them by default) and the mean over all anchors (pml's default averages the
        # non-zero terms only).
        from pytorch_metric_learning import distances, losses, miners, reducers

        distance = distances.LpDistance(normalize_embeddings=False)
        miner = miners.BatchHardMiner(distance=distance)
        pml_loss = losses.TripletMarginLoss(margin=MARGIN, distance=distance, reducer=reducers.MeanReducer())
        return lambda x, labels, ref, ref_labels: pml_loss(x, labels, miner(x, labels))

    backend = impl.split(":", 1)[1] if impl.startswith("reidfast:") else "reference"

    def loss(x, labels, ref, ref_labels):
        return triplet_loss(x, labels, margin=MARGIN, ref=ref, ref_labels=ref_labels, backend=backend)

    return torch.compile(loss) if impl == "reference-compiled" else loss


def make_inputs(device, n, d, bank, requires_grad):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator).to(device).requires_grad_(requires_grad)
    labels = (torch.arange(n) // IDENTITY_SIZE).to(device)
    if not bank:
        return x, labels, None, None
    ref = torch.randn(bank, d, generator=generator).to(device)
    ref_labels = torch.randint(0, n // IDENTITY_SIZE, (bank,), generator=generator).to(device)
    return x, labels, ref, ref_labels


PARAMS = [
    pytest.param(
        device, n, d, bank, impl, id=f"{device}-N{n}-D{d}{f'-bank{bank}' if bank else ''}-{impl}",
        marks=[pytest.mark.large] if n == LARGEST_N else [],
    )
    for device, n, d, bank in CASES
    if device in devices()
    for impl in implementations(device, bank)
]


def _group(passname, device, n, d, bank):
    against = f" bank {bank}" if bank else ""
    return f"triplet_loss {passname} {device} N={n} D={d}{against} float32"


@pytest.mark.parametrize("device, n, d, bank, impl", PARAMS)
def test_forward(benchmark, timed, device, n, d, bank, impl):
    benchmark.group = _group("forward", device, n, d, bank)
    x, labels, ref, ref_labels = make_inputs(device, n, d, bank, requires_grad=False)
    loss = make_loss(impl)
    # Every implementation computes the same loss; a faster wrong one would be no result.
    expected = triplet_loss(x, labels, margin=MARGIN, ref=ref, ref_labels=ref_labels, backend="reference")
    torch.testing.assert_close(loss(x, labels, ref, ref_labels), expected, rtol=1e-4, atol=1e-4)

    def fn():
        with torch.no_grad():
            return loss(x, labels, ref, ref_labels)

    timed(fn, device, op="triplet_loss", impl=impl, passname="forward", shape=[n, d], bank=bank, dtype="float32")


@pytest.mark.parametrize("device, n, d, bank, impl", PARAMS)
def test_forward_backward(benchmark, timed, device, n, d, bank, impl):
    benchmark.group = _group("forward+backward", device, n, d, bank)
    x, labels, ref, ref_labels = make_inputs(device, n, d, bank, requires_grad=True)
    loss = make_loss(impl)

    def fn():
        x.grad = None
        loss(x, labels, ref, ref_labels).backward()

    timed(fn, device, op="triplet_loss", impl=impl, passname="forward+backward", shape=[n, d], bank=bank,
          dtype="float32")

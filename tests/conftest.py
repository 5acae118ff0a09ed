"""Test configuration. Without a GPU, Triton kernels run in its interpreter on CPU tensors; that
switch must be set before any @triton.jit decorator runs, so it is set here, first."""

import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import reidfast  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _global_seed_from_node_id(request):
    """Tests that draw from torch's global generator draw the same numbers run alone as in the
    whole suite, whatever ran before them: the seed is fixed by the test's node id."""
    torch.manual_seed(seed_for(request.node.nodeid))


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    """Tests choose backends explicitly; a REIDFAST_BACKEND in the caller's shell must not leak in."""
    monkeypatch.delenv("REIDFAST_BACKEND", raising=False)


def seed_for(*parts) -> int:
    """A seed fixed by a test's parameters, the same in every process: the CRC-32 of their repr
    (hash() of a string changes with PYTHONHASHSEED, so a failure could not be replayed)."""
    return zlib.crc32(repr(parts).encode())


requires_extension = pytest.mark.skipif(
    not reidfast.available_backends()["cpu"].available,
    reason=f"needs the compiled extension: {reidfast.available_backends()['cpu'].reason}",
)


def cpu_backends() -> list[str]:
    """Backends that run on CPU tensors here (triton only when interpreted)."""
    return [name for name, status in reidfast.available_backends().items() if "cpu" in status.devices]

"""Test configuration. Without a GPU, Triton kernels run in its interpreter on CPU tensors; that
switch must be set before any @triton.jit decorator runs, so it is set here, first."""

import os

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
def _no_backend_override(monkeypatch):
    """Tests choose backends explicitly; a REIDFAST_BACKEND in the caller's shell must not leak in."""
    monkeypatch.delenv("REIDFAST_BACKEND", raising=False)


def cpu_backends() -> list[str]:
    """Backends that run on CPU tensors here (triton only when interpreted)."""
    return [name for name, status in reidfast.available_backends().items() if "cpu" in status.devices]

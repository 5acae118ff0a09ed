"""The backend choice and its limit policy (reidfast.backend), on an op made up for the test."""

import warnings

import pytest
import torch

import reidfast.backend
from reidfast.backend import OpBackends

pytestmark = pytest.mark.skipif(
    not reidfast.available_backends()["cpu"].available, reason="needs the compiled extension (the cpu backend)"
)


def made_up_op() -> OpBackends:
    kernels = OpBackends("made_up_op")
    kernels.add("cpu", torch.ops.reidfast.pyramid_pool_forward.default)
    return kernels


def too_large_for_cpu(name: str) -> str | None:
    return "n must be at most 4 on the cpu kernel, got 5" if name == "cpu" else None


def test_automatic_choice_takes_the_fastest_backend_that_fits():
    kernels = made_up_op()
    assert kernels.implemented() == ("reference", "cpu")
    assert kernels.choose(None, torch.zeros(2)) == "cpu"


def test_automatic_choice_moves_on_and_says_so_once(monkeypatch):
    monkeypatch.setattr(reidfast.backend, "_warned", set())
    kernels = made_up_op()
    with pytest.warns(UserWarning, match="'reference' backend instead of 'cpu': n must be at most 4"):
        assert kernels.choose(None, torch.zeros(2), too_large_for_cpu) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        assert kernels.choose(None, torch.zeros(2), too_large_for_cpu) == "reference"


def test_requested_backend_raises_with_the_limit(monkeypatch):
    kernels = made_up_op()
    with pytest.raises(ValueError, match="made_up_op: backend 'cpu' cannot take this call: n must be at most 4"):
        kernels.choose("cpu", torch.zeros(2), too_large_for_cpu)
    monkeypatch.setenv("REIDFAST_BACKEND", "cpu")
    with pytest.raises(ValueError, match="n must be at most 4"):
        kernels.choose(None, torch.zeros(2), too_large_for_cpu)


def test_float64_is_a_limit_of_the_gpu_backends_only():
    kernels = made_up_op()
    assert kernels.choose("cpu", torch.zeros(2, dtype=torch.float64)) == "cpu"
    assert kernels._refusal("triton", torch.zeros(2, dtype=torch.float64), None) == (
        TypeError,
        "float64 runs on the 'reference' and 'cpu' backends only",
    )


def test_kernels_only_for_known_backends():
    with pytest.raises(ValueError, match="cannot register a kernel for backend 'reference'"):
        made_up_op().add("reference", torch.ops.reidfast.pyramid_pool_forward.default)

"""The CMake-built shared library registers the same ops as reidfast._C.

It is loaded in a fresh interpreter that never imports reidfast (the reidfast namespace can be
defined only once per process), runs the op there, and the result is compared here with the
reference. REIDFAST_CMAKE_LIBRARY names the library (default: build/cmake/libreidfast_ops.so);
REIDFAST_REQUIRE_CMAKE=1 turns a missing library into a failure instead of a skip.
"""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from reidfast.ops import adaptive_margin_loss, triplet_loss
from reidfast.ops.pyramid_pool import reference_forward

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = pathlib.Path(os.environ.get("REIDFAST_CMAKE_LIBRARY", ROOT / "build/cmake/libreidfast_ops.so"))

RUN_OP = """
import sys, torch
torch.ops.load_library(sys.argv[1])
x = torch.load(sys.argv[2])
out, argmax = torch.ops.reidfast.pyramid_pool_forward(x, 6, [0, 0, 3], [6, 3, 3], "max+avg", True)
torch.save((out, argmax), sys.argv[3])
"""

# The loss ops' autograd is registered in C++: a libtorch-only process gets their gradients.
RUN_LOSS_BACKWARD = """
import sys, torch
torch.ops.load_library(sys.argv[1])
x, labels = torch.load(sys.argv[2])
x.requires_grad_(True)
loss = torch.ops.reidfast.triplet_loss(x, labels, x, labels, True, 1, 1, False, 0.3, False, "mean")
am_loss, _, _ = torch.ops.reidfast.adaptive_margin_forward(x, labels, 8.0, 2.1, "mean", True)
(loss + am_loss).backward()
torch.save((loss.detach(), am_loss.detach(), x.grad), sys.argv[3])
"""


def require_library() -> None:
    if not LIBRARY.exists():
        if os.environ.get("REIDFAST_REQUIRE_CMAKE") == "1":
            pytest.fail(f"CMake library not found at {LIBRARY}")
        pytest.skip(f"CMake library not built ({LIBRARY})")


def run_in_fresh_process(script: str, tmp_path, *inputs) -> object:
    torch.save(inputs if len(inputs) > 1 else inputs[0], tmp_path / "in.pt")
    subprocess.run(
        [sys.executable, "-c", script, str(LIBRARY), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        check=True, cwd=tmp_path,
    )
    return torch.load(tmp_path / "out.pt")


def test_cmake_library_runs_the_op(tmp_path):
    require_library()
    x = torch.randn(3, 10, 24, 8)
    out, argmax = run_in_fresh_process(RUN_OP, tmp_path, x)
    expected, expected_argmax = reference_forward(x, 6, [0, 0, 3], [6, 3, 3], "max+avg")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(argmax, expected_argmax, rtol=0, atol=0)


def test_cmake_library_differentiates_the_losses(tmp_path):
    require_library()
    generator = torch.Generator().manual_seed(3)
    x, labels = torch.randn(12, 6, generator=generator), torch.arange(4).repeat_interleave(3)
    loss, am_loss, grad = run_in_fresh_process(RUN_LOSS_BACKWARD, tmp_path, x, labels)
    x = x.clone().requires_grad_(True)
    expected = triplet_loss(x, labels, backend="reference")
    expected_am = adaptive_margin_loss(x, labels, reduction="mean", backend="reference")
    (expected_grad,) = torch.autograd.grad(expected + expected_am, x)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(am_loss, expected_am.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)

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


def test_cmake_library_runs_the_op(tmp_path):
    if not LIBRARY.exists():
        if os.environ.get("REIDFAST_REQUIRE_CMAKE") == "1":
            pytest.fail(f"CMake library not found at {LIBRARY}")
        pytest.skip(f"CMake library not built ({LIBRARY})")
    x = torch.randn(3, 10, 24, 8)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run(
        [sys.executable, "-c", RUN_OP, str(LIBRARY), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
        check=True, cwd=tmp_path,
    )
    out, argmax = torch.load(tmp_path / "out.pt")
    expected, expected_argmax = reference_forward(x, 6, [0, 0, 3], [6, 3, 3], "max+avg")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(argmax, expected_argmax, rtol=0, atol=0)

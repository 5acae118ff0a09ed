"""Kernel launches described as data, shared by the Triton modules: a launcher builds a Launch
and runs it; the tests compile the same Launch ahead of time for GPU architectures the machine
does not have (tests/triton_aot.py)."""

from typing import NamedTuple

import torch
import triton


class Launch(NamedTuple):
    """One kernel launch, described as data: the launchers run it, and a test compiles exactly
    this configuration ahead of time for GPU architectures the machine does not have."""

    kernel: triton.JITFunction
    grid: tuple[int, ...]
    args: dict[str, object]  # runtime arguments by name: tensors and ints
    constexprs: dict[str, object]  # compile-time arguments by name
    num_warps: int


def run_launch(launch: Launch) -> None:
    """Run `launch` through torch.library.wrap_triton, so torch.compile sees the kernel."""
    torch.library.wrap_triton(launch.kernel)[launch.grid](
        **launch.args, **launch.constexprs, num_warps=launch.num_warps
    )

"""Kernel launches described as data, shared by the Triton modules: a launcher builds a Launch
and runs it; the tests compile the same Launch ahead of time for GPU architectures the machine
does not have (tests/triton_aot.py).

Also the rules every launch keeps, in one place: the device it runs on, the int32 index limit,
and the smallest tl.dot block.
"""

import contextlib
from typing import NamedTuple

import torch
import triton

# Every tl.dot operand dimension (M, N and K) is at least this: Triton before 3.4 (torch 2.6 and
# 2.7, which the package admits) rejects smaller ones on NVIDIA GPUs at the first compile, and
# the interpreter never does, so the plans keep to it and tests/triton_aot.py checks it.
MIN_DOT_BLOCK = 16

# Row, column and position counts are int32 inside the kernels (pointer offsets are int64), and a
# program's block may run up to this many indices past the last one before its mask applies.
MAX_BLOCK = 1024
INDEX_LIMIT = 2**31 - 1 - MAX_BLOCK


class Launch(NamedTuple):
    """One kernel launch, described as data: the launchers run it, and a test compiles exactly
    this configuration ahead of time for GPU architectures the machine does not have."""

    kernel: triton.JITFunction
    grid: tuple[int, ...]
    args: dict[str, object]  # runtime arguments by name: tensors and ints
    constexprs: dict[str, object]  # compile-time arguments by name
    num_warps: int


def check_index_limit(op: str, name: str, value: int) -> None:
    """ValueError unless the count `value` of `name` fits the kernels' int32 indices."""
    if int(value) > INDEX_LIMIT:
        raise ValueError(
            f"{op} (Triton): {name} = {int(value)} exceeds the kernels' int32 index limit {INDEX_LIMIT} "
            f"(2^31 - 1 - {MAX_BLOCK})"
        )


def _device_of(launch: Launch) -> torch.device:
    """The device of the launch's tensors (the launchers allocate every output on x's device)."""
    return next(value.device for value in launch.args.values() if isinstance(value, torch.Tensor))


def run_launch(launch: Launch) -> None:
    """Run `launch` through torch.library.wrap_triton, so torch.compile sees the kernel, on the
    device of its tensors: Triton launches on the current CUDA device and its current stream, which
    need not be the tensors' (a model on cuda:1 while cuda:0 is current). Interpreted launches on
    CPU tensors need no device context."""
    device = _device_of(launch)
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:
        torch.library.wrap_triton(launch.kernel)[launch.grid](
            **launch.args, **launch.constexprs, num_warps=launch.num_warps
        )

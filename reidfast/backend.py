"""Which backends exist on this machine, and which one an op call uses.

Backends:
  reference  plain PyTorch, the specification of every op; always available.
  cpu        C++ kernels of reidfast._C, for CPU tensors.
  cuda       CUDA C++ kernels of reidfast._C, for CUDA tensors (built when torch had CUDA and nvcc
             was found at install time).
  triton     Triton kernels, for CUDA tensors; also for CPU tensors when TRITON_INTERPRET=1 (the
             Triton interpreter, for testing only: it is slow).

Selection, per call: the op's `backend=` argument, else the REIDFAST_BACKEND environment
variable, else the fastest backend available for the input's device (cuda, triton, reference on a
GPU; cpu, reference on the CPU). A backend that is named but cannot run raises with the reason;
nothing falls back silently.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import torch

from reidfast import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")
_PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here; `reason` says why not, or what it runs on."""

    name: str
    available: bool
    devices: tuple[str, ...]
    reason: str


def triton_installed() -> bool:
    """Whether the triton package can be imported."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the interpreter (TRITON_INTERPRET=1), on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def available_backends() -> dict[str, BackendStatus]:
    """Each backend, whether it is available on this machine, on which devices, and why (not)."""
    cuda_device = torch.cuda.is_available()
    statuses = [BackendStatus("reference", True, ("cpu", "cuda"), "plain PyTorch")]

    if _extension.LOAD_ERROR is None:
        statuses.append(BackendStatus("cpu", True, ("cpu",), "reidfast._C CPU kernels"))
    else:
        statuses.append(BackendStatus("cpu", False, (), f"extension not loaded: {_extension.LOAD_ERROR}"))

    if _extension.LOAD_ERROR is not None:
        statuses.append(BackendStatus("cuda", False, (), f"extension not loaded: {_extension.LOAD_ERROR}"))
    elif not _extension.has_kernel("pyramid_pool_forward", "CUDA"):
        statuses.append(BackendStatus("cuda", False, (), "reidfast._C was built without CUDA kernels"))
    elif not cuda_device:
        statuses.append(BackendStatus("cuda", False, (), "no CUDA device is visible to torch"))
    else:
        statuses.append(BackendStatus("cuda", True, ("cuda",), "reidfast._C CUDA kernels"))

    if not triton_installed():
        statuses.append(BackendStatus("triton", False, (), "the triton package is not installed"))
    elif triton_interpreted():
        statuses.append(BackendStatus("triton", True, ("cpu",), "Triton interpreter (TRITON_INTERPRET=1)"))
    elif cuda_device:
        statuses.append(BackendStatus("triton", True, ("cuda",), "Triton kernels"))
    else:
        statuses.append(BackendStatus("triton", False, (), "no CUDA device (set TRITON_INTERPRET=1 to interpret on the CPU)"))
    return {status.name: status for status in statuses}


@torch.compiler.assume_constant_result
def resolve_backend(
    backend: str | None, device: torch.device, op: str | None = None, implemented: tuple[str, ...] = BACKENDS
) -> str:
    """The backend an op call on `device` uses (see the module docstring for the order).

    `implemented` lists the backends that have kernels for `op` in this build (an op may be newer
    than a backend's kernels): automatic selection skips the others, and naming one raises.

    Under torch.compile the choice is made once, when the function is traced, and is part of the
    compiled graph: a later change of REIDFAST_BACKEND does not retrace it.
    """
    requested = backend if backend is not None else os.environ.get("REIDFAST_BACKEND") or None
    statuses = available_backends()
    if requested is None:
        for name in _PREFERENCE.get(device.type, ("reference",)):
            if device.type in statuses[name].devices and name in implemented:
                return name
        return "reference"
    source = "backend" if backend is not None else "REIDFAST_BACKEND"
    if requested not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {requested!r}")
    status = statuses[requested]
    if not status.available:
        raise RuntimeError(f"{source}={requested!r} is not available on this machine: {status.reason}")
    if device.type not in status.devices:
        raise ValueError(
            f"{source}={requested!r} runs on {', '.join(status.devices)} tensors; the input is on {device}"
        )
    if requested not in implemented:
        raise RuntimeError(
            f"{source}={requested!r} has no kernel for {op} in this build; "
            f"backends with one: {', '.join(implemented)}"
        )
    return requested

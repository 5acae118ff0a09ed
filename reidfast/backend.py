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

Limits, one policy for every op (`OpBackends.choose`). A backend may not take every argument: the
GPU kernels keep at most 32 ranks of a triplet selection in registers, float64 runs on the
'reference' and 'cpu' backends only, the fused kernels index with 32-bit integers, and so on. A
backend that was asked for (by `backend=` or REIDFAST_BACKEND) and cannot take the arguments raises,
naming the limit; a backend chosen automatically gives way to the next one in the device's order
that can (the reference at the end takes everything), and a warning says so once per op, backend
and limit.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import warnings
from collections.abc import Callable

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


# A backend's limit check: given the backend's name, the reason it cannot take this call's
# arguments (naming the size and the limit), or None.
Limit = Callable[[str], "str | None"]

_FLOAT64_BACKENDS = ("reference", "cpu")
_warned: set[tuple[str, str, str]] = set()


class OpBackends:
    """The kernels of one op in this build, and the choice of backend for each call.

    `kernels` maps a backend name to its registered forward op; "reference" needs none (it is the
    op's own Python code). `choose` applies the selection order and the limit policy of the module
    docstring.
    """

    def __init__(self, op: str, triton_name: str | None = None):
        self.op = op
        self.triton_name = triton_name or op  # the op's name in reidfast.kernels.supported
        self.kernels: dict[str, torch._ops.OpOverload] = {}
        self._implemented: tuple[str, ...] = ("reference",)

    def add(self, name: str, kernel) -> None:
        """Registers `kernel` as the op's forward on backend `name`."""
        if name not in BACKENDS or name == "reference":
            raise ValueError(f"{self.op}: cannot register a kernel for backend {name!r}")
        self.kernels[name] = kernel
        self._implemented = ("reference",) + tuple(backend for backend in BACKENDS if backend in self.kernels)

    def add_triton(self, op_name: str, launcher) -> torch._ops.OpOverload:
        """Registers a Triton launcher (every argument and the result annotated with torch types) as
        the operator reidfast::op_name through torch.library.triton_op, so torch.compile sees its
        kernels; returns the operator."""
        return torch.library.triton_op(f"reidfast::{op_name}", mutates_args=())(launcher)._opoverload

    def implemented(self) -> tuple[str, ...]:
        """Backends with a kernel for this op in this build, in BACKENDS order."""
        return self._implemented

    def choose(self, backend: str | None, x: torch.Tensor, limit: Limit | None = None) -> str:
        """The backend that runs this call on x's device and dtype.

        `limit(name)` gives the reason backend `name` cannot take the call's other arguments, or
        None. A requested backend that cannot take the call raises (TypeError for the dtype,
        ValueError for a size limit); an automatic choice moves on to the next backend that can.
        """
        name = resolve_backend(backend, x.device, self.op, self.implemented())
        refusal = self._refusal(name, x, limit)
        if refusal is None:
            return name
        error, reason = refusal
        if backend is not None or os.environ.get("REIDFAST_BACKEND"):
            raise error(f"{self.op}: backend {name!r} cannot take this call: {reason}")
        order = _PREFERENCE.get(x.device.type, ("reference",))
        statuses = available_backends()
        for candidate in order[order.index(name) + 1 :]:
            runs_here = x.device.type in statuses[candidate].devices and candidate in self.implemented()
            if runs_here and self._refusal(candidate, x, limit) is None:
                _warn_once(self.op, name, candidate, reason)
                return candidate
        _warn_once(self.op, name, "reference", reason)
        return "reference"

    def _refusal(self, name: str, x: torch.Tensor, limit: Limit | None) -> tuple[type, str] | None:
        if name == "reference":
            return None
        if x.dtype == torch.float64 and name not in _FLOAT64_BACKENDS:
            return TypeError, "float64 runs on the 'reference' and 'cpu' backends only"
        if name == "triton" and x.device.type == "cuda":
            from reidfast import kernels

            reason = kernels.supported(self.triton_name, torch.cuda.get_device_capability(x.device), x.dtype)
            if reason is not None:
                return ValueError, reason
        reason = limit(name) if limit is not None else None
        return None if reason is None else (ValueError, reason)


def _warn_once(op: str, chosen: str, instead: str, reason: str) -> None:
    if torch.compiler.is_compiling() or (op, chosen, reason) in _warned:
        return
    _warned.add((op, chosen, reason))
    warnings.warn(f"{op}: running on the {instead!r} backend instead of {chosen!r}: {reason}", stacklevel=3)

"""Loads the compiled extension reidfast._C, once, and remembers why it failed if it did.

Importing reidfast._C runs its static registrations: the reidfast:: op schemas and their CPU (and,
when built with CUDA, CUDA) kernels. Without it the package still works on the 'reference'
backend (and 'triton' where Triton runs); it warns once, with the reason.
"""

import warnings

import torch  # the extension links against libtorch, which must be loaded first

try:
    from reidfast import _C  # noqa: F401  (imported for its op registrations)
except ImportError as error:
    LOAD_ERROR: str | None = f"{type(error).__name__}: {error}"
    warnings.warn(
        f"reidfast: the compiled extension reidfast._C is not loaded ({LOAD_ERROR}); "
        "the 'cpu' and 'cuda' backends are unavailable. Build it with "
        "`pip install -e . --no-build-isolation`.",
        RuntimeWarning,
        stacklevel=2,
    )
else:
    LOAD_ERROR = None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the extension registered a kernel of `reidfast::<op>` for `dispatch_key`."""
    if LOAD_ERROR is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"reidfast::{op}", dispatch_key)

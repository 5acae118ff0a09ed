"""Triton kernels of reidfast, one module per op (installed as reidfast.kernels).

`supported` says where the kernels are not meant to run, for the dispatcher to pick another
backend there; the limits it encodes are checked ahead of time by tests/triton_aot.py.
"""

import torch

_16_BIT = (torch.float16, torch.bfloat16)


def supported(op: str, capability: tuple[int, int], dtype: torch.dtype) -> str | None:
    """None when the Triton kernels of `op` ("pyramid_pool", "triplet_select",
    "adaptive_margin") serve a CUDA device of compute capability `capability` (major, minor) for
    inputs of `dtype`, else the reason they do not.

    - Below sm_75 (Volta and older) the kernels are neither compiled nor tested.
    - On Turing (sm_7.5): pyramid_pool in every dtype and triplet_select in float32 only.
      Turing has no bfloat16 tensor-core instruction (mma.sync on bfloat16 needs sm_80), and at
      the tile sizes tuned for sm_80 and newer the 16-bit triplet_select kernel and the
      adaptive_margin gradient kernel (float32, float16) spill registers there (compiled ahead of
      time: 16 to 1464 bytes of stack per thread).
    """
    major, minor = (int(v) for v in capability)
    if (major, minor) < (7, 5):
        return f"the Triton kernels are built for sm_75 and newer, not sm_{major}{minor}"
    if major == 7 and op == "adaptive_margin":
        return (
            f"the Triton adaptive_margin gradient kernel spills registers on sm_{major}{minor} "
            "(Turing) at the tile sizes tuned for sm_80 and newer"
        )
    if major == 7 and op == "triplet_select" and dtype in _16_BIT:
        return (
            f"the Triton triplet_select kernel takes float32 only on sm_{major}{minor} (Turing): "
            "there is no bfloat16 tensor-core dot, and the 16-bit kernel spills registers"
        )
    return None

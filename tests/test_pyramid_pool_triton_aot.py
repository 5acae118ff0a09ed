"""The Triton pyramid_pool kernels compile for sm_80 and sm_90 in the configurations the launcher
picks: NCHW and channels_last, 16- and 32-bit, the full pyramid and MGN's windows, every mode,
without spilling registers."""

import pytest

pytest.importorskip("triton")
import torch  # noqa: E402
from triton_aot import ARCHITECTURES, assert_compiled_without_spills, compile_all  # noqa: E402

from reidfast.ops import pyramid_windows  # noqa: E402

MGN_WINDOWS = [(0, 6), (0, 3), (3, 3), (0, 2), (2, 2), (4, 2)]

# (shape, num_parts, windows, dtype, channels_last, mode)
CASES = {
    "resnet-pyramid-bf16": ((64, 2048, 24, 8), 6, None, torch.bfloat16, False, "max+avg"),
    "resnet-pyramid-fp32": ((32, 2048, 24, 8), 6, None, torch.float32, False, "max+avg"),
    "resnet-pyramid-fp32-channels_last": ((64, 2048, 24, 8), 6, None, torch.float32, True, "max+avg"),
    "mgn-fp16-max": ((32, 2048, 24, 8), 6, MGN_WINDOWS, torch.float16, False, "max"),
    "pyramid4-fp32-avg": ((8, 512, 16, 8), 4, None, torch.float32, False, "avg"),
    "odd-shape-fp32": ((3, 70, 13, 5), 6, MGN_WINDOWS, torch.float32, False, "max+avg"),
    "one-by-one-bf16-channels_last": ((2, 2048, 1, 1), 1, None, torch.bfloat16, True, "max+avg"),
}


def launches():
    """{case: [forward launch, backward launch]} on meta tensors (only shapes and strides matter)."""
    from reidfast.kernels.pyramid_pool import backward_launch, forward_launch

    def layout(shape, dtype, channels_last):
        x = torch.empty(shape, dtype=dtype, device="meta")
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    result = {}
    for case, (shape, num_parts, windows, dtype, channels_last, mode) in CASES.items():
        windows = pyramid_windows(num_parts) if windows is None else windows
        starts, lengths = [s for s, _ in windows], [n for _, n in windows]
        B, C, _, _ = shape
        out = torch.empty((B, len(windows), C), dtype=dtype, device="meta")
        argmax = torch.empty((B, len(windows), C), dtype=torch.int32, device="meta")
        grad_x = layout(shape, dtype, channels_last)
        result[case] = [
            forward_launch(layout(shape, dtype, channels_last), out, argmax, num_parts, starts, lengths, mode, mode != "avg"),
            backward_launch(out, argmax, grad_x, num_parts, starts, lengths, mode),
        ]
    return result


@pytest.fixture(scope="module")
def reports():
    return compile_all(__file__, "launches")


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("case", CASES)
def test_kernels_compile(reports, case, arch):
    assert_compiled_without_spills(reports[(case, arch)])

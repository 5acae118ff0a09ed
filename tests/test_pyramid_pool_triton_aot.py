"""The Triton pyramid_pool kernels compile for sm_75, sm_80 and sm_90 in the configurations the
launcher picks: NCHW and channels_last, 16- and 32-bit, the full pyramid and MGN's windows, every
mode, without spilling registers."""

import pytest

pytest.importorskip("triton")
import torch  # noqa: E402
from triton_aot import define_tests  # noqa: E402

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


aot_reports, test_kernels_compile = define_tests(
    __file__, "pyramid_pool", {case: values[3] for case, values in CASES.items()}
)


def test_sizes_past_the_int32_index_limit_raise():
    """Spatial positions and program ids are int32 in the kernels: a larger H * W or grid is
    refused before launch (meta tensors: nothing is allocated)."""
    from reidfast.kernels._launch import INDEX_LIMIT
    from reidfast.kernels.pyramid_pool import forward_launch

    def launch(B, C, H, W):
        x = torch.empty((B, C, H, W), device="meta")
        out = torch.empty((B, 1, C), device="meta")
        argmax = torch.empty((B, 1, C), dtype=torch.int32, device="meta")
        return forward_launch(x, out, argmax, 1, [0], [1], "max", True)

    launch(1, 1, 2**15, 2**15)
    with pytest.raises(ValueError, match=rf"H \* W = {2**31} exceeds the kernels' int32 index limit {INDEX_LIMIT}"):
        launch(1, 1, 2**16, 2**15)
    with pytest.raises(ValueError, match=r"B \* ceil\(C / BLOCK_C\) \(programs\) = \d+ exceeds"):
        launch(2**31, 2, 1, 1)

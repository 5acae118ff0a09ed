"""The Triton adaptive_margin kernels compile for sm_80 and sm_90 in the configurations the
launcher picks, without spilling registers and with tl.dot blocks >= 16: float32 with a D range
of many gradient chunks per program (the workspace path) and with an odd D, bfloat16 with a
large D and the two-mask slopes of "balanced", float16 with a large batch and a small D (the
gradient kept in registers), each with and without the gradient. They are compiled for sm_75
too, where they spill: reidfast.kernels.supported keeps Triton off adaptive_margin there."""

import pytest

pytest.importorskip("triton")
import torch  # noqa: E402
from triton_aot import define_tests  # noqa: E402

# (N, D, dtype, reduction)
SHAPES = {
    "n256-d800-fp32-mean": (256, 800, torch.float32, "mean"),
    "n300-d77-fp32-balanced": (300, 77, torch.float32, "balanced"),
    "n1024-d2048-bf16-balanced": (1024, 2048, torch.bfloat16, "balanced"),
    "n4096-d128-fp16-sum": (4096, 128, torch.float16, "sum"),
}
CASES = {
    f"{name}-{'grad' if compute_grad else 'loss'}": (*shape, compute_grad)
    for name, shape in SHAPES.items()
    for compute_grad in (True, False)
}


def launches():
    """{case: the forward's four launches} on meta tensors (only shapes and strides matter)."""
    from reidfast.kernels.adaptive_margin import allocate, forward_launches

    result = {}
    for case, (N, D, dtype, reduction, compute_grad) in CASES.items():
        x = torch.empty((N, D), dtype=dtype, device="meta")
        labels = torch.empty((N,), dtype=torch.int64, device="meta")
        buffers = allocate(x, compute_grad)
        result[case] = forward_launches(x, labels, 8.0, 2.1, reduction, compute_grad, buffers)
    return result


aot_reports, test_kernels_compile = define_tests(
    __file__, "adaptive_margin", {case: values[2] for case, values in CASES.items()}, expected_kernels=4
)


def test_plans_cover_both_gradient_paths():
    """The float16 case keeps each program's gradient chunk in registers; the others accumulate
    it in a workspace. The gradient kernel never splits D beyond _MAX_GRAD_SPLITS."""
    from reidfast.kernels import adaptive_margin as kernels

    assert kernels.plan(4096, 128, torch.float16).chunks_per_split == 1
    for N, D, dtype, _ in SHAPES.values():
        cfg = kernels.plan(N, D, dtype)
        assert 1 <= cfg.grad_splits <= kernels._MAX_GRAD_SPLITS
        assert (cfg.grad_splits - 1) * cfg.chunks_per_split < -(-D // cfg.block_g)  # no empty split
        assert (cfg.splits - 1) * cfg.tiles_per_split < cfg.row_blocks
    assert kernels.plan(256, 800, torch.float32).chunks_per_split > 1
    assert kernels.plan(1024, 2048, torch.bfloat16).chunks_per_split > 1

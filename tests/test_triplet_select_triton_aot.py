"""The Triton triplet_select kernels compile for sm_75, sm_80 and sm_90 in the configurations the
launcher picks: batch-hard in float32, wider selections in bfloat16, a large float16 memory bank
(split columns and the merge kernel), the widest ranks, without spilling registers and with
tl.dot blocks >= 16. On sm_75 the 16-bit cases spill and are skipped: reidfast.kernels.supported
keeps Triton to float32 there."""

import pytest

pytest.importorskip("triton")
import torch  # noqa: E402
from triton_aot import define_tests  # noqa: E402

# (N, M or None for the batch itself, D, dtype, k, p, squared)
CASES = {
    "batch-hard-fp32": (256, None, 2048, torch.float32, 1, 1, False),
    "k4-p8-bf16": (256, None, 128, torch.bfloat16, 4, 8, False),
    "memory-bank-fp16": (1024, 65536, 2048, torch.float16, 1, 1, False),
    "k32-p32-fp32": (256, None, 2048, torch.float32, 32, 32, True),
    "k32-p32-bank-bf16-odd-d": (512, 8192, 500, torch.bfloat16, 32, 32, False),
}


def launches():
    """{case: [selection launch, merge launch if the columns are split]} on meta tensors."""
    from reidfast.kernels.triplet_select import forward_launch, merge_launch, workspace

    result = {}
    for case, (N, M, D, dtype, k, p, squared) in CASES.items():
        x = torch.empty((N, D), dtype=dtype, device="meta")
        labels = torch.empty((N,), dtype=torch.int64, device="meta")
        self_reference = M is None
        if self_reference:
            ref, ref_labels = x, labels
        else:
            ref = torch.empty((M, D), dtype=dtype, device="meta")
            ref_labels = torch.empty((M,), dtype=torch.int64, device="meta")
        outputs = (
            torch.empty((N,), dtype=dtype, device="meta"),
            torch.empty((N,), dtype=dtype, device="meta"),
            torch.empty((N,), dtype=torch.int64, device="meta"),
            torch.empty((N,), dtype=torch.int64, device="meta"),
        )
        part_pos, part_neg = workspace(x, ref, k, p)
        case_launches = [
            forward_launch(
                x, labels, ref, ref_labels, *outputs, part_pos, part_neg, self_reference, k, p, squared
            )
        ]
        if part_pos.numel() > 0:
            case_launches.append(merge_launch(part_pos, part_neg, *outputs, k, p))
        result[case] = case_launches
    return result


aot_reports, test_kernels_compile = define_tests(
    __file__, "triplet_select", {case: values[3] for case, values in CASES.items()}
)


def test_memory_bank_splits_columns():
    """N / BLOCK_N row blocks alone would leave most SMs idle: the bank is split and merged."""
    from reidfast.kernels.triplet_select import plan

    cfg = plan(1024, 65536, 2048, torch.float16, 1, 1)
    assert cfg.splits > 1
    assert -(-1024 // cfg.block_n) * cfg.splits >= 128

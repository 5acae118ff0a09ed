"""What the C++ CPU kernels do below the public API: the instruction-set switch REIDFAST_CPU_ISA,
the 32-bit limits, the bank gradient on request, and the rarely taken paths of the NaN policy."""

import os
import subprocess
import sys

import pytest
import torch

import reidfast
from reidfast.ops import adaptive_margin_loss, pyramid_pool_reference, triplet_select

pytestmark = pytest.mark.skipif(
    not reidfast.available_backends()["cpu"].available, reason="the extension is not built"
)

ISA_NAMES = ("avx2", "generic")

# Runs in a fresh interpreter (the variable is read once per process): prints the selected
# instruction set, then saves pyramid_pool's input, output, upstream gradient and input gradient
# for both layouts to argv[1].
POOL_UNDER_ISA = """
import sys, torch, reidfast
from reidfast.ops import pyramid_pool
print(torch.ops.reidfast.cpu_isa())
generator = torch.Generator().manual_seed(0)
results = []
for layout in (torch.contiguous_format, torch.channels_last):
    x = torch.randn(3, 70, 13, 5, generator=generator).to(memory_format=layout)
    x[1, 4, 6, 2] = float("nan")
    x.requires_grad_(True)
    out = pyramid_pool(x, 4, pool="max+avg", backend="cpu")
    grad_out = torch.randn(out.shape, generator=generator)
    out.backward(grad_out)
    results.append((x.detach(), out.detach(), grad_out, x.grad))
torch.save(results, sys.argv[1])
"""


def run_under_isa(isa, script, *args):
    """Runs `script` in a fresh interpreter with REIDFAST_CPU_ISA=isa."""
    environment = {**os.environ, "REIDFAST_CPU_ISA": isa}
    return subprocess.run([sys.executable, "-c", script, *args], env=environment, capture_output=True, text=True)


def test_selected_isa_follows_the_environment():
    """The kernels this process runs are the ones REIDFAST_CPU_ISA asks for: where CI runs the CPU
    op tests with REIDFAST_CPU_ISA=generic, this test proves that the generic kernels ran."""
    selected = torch.ops.reidfast.cpu_isa()
    assert selected in ISA_NAMES
    requested = os.environ.get("REIDFAST_CPU_ISA", "auto")
    if requested in ISA_NAMES:
        assert selected == requested


@pytest.mark.parametrize("isa", ["generic", "auto"])
def test_each_isa_matches_the_reference(isa, tmp_path):
    """The generic kernels and the automatic choice (AVX2 on such a CPU), NaN included."""
    result = run_under_isa(isa, POOL_UNDER_ISA, str(tmp_path / "pool.pt"))
    assert result.returncode == 0, result.stderr
    chosen = result.stdout.split()[-1]
    assert chosen in ISA_NAMES and (isa == "auto" or chosen == isa)
    for x, out, grad_out, grad in torch.load(tmp_path / "pool.pt"):
        x.requires_grad_(True)
        expected = pyramid_pool_reference(x, 4, pool="max+avg")
        expected.backward(grad_out)
        torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(grad, x.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["avx512", "GENERIC"])
def test_unknown_isa_is_refused(value):
    script = (
        "import torch, reidfast\n"
        "try:\n"
        "    reidfast.ops.pyramid_pool(torch.randn(1, 2, 4, 2), 2, backend='cpu')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    result = run_under_isa(value, script)
    assert result.returncode == 0, result.stderr
    assert f"REIDFAST_CPU_ISA must be 'auto', 'generic' or 'avx2', got '{value}'" in result.stdout


def test_plane_positions_above_int32_are_refused():
    """The argmax is int32: a map of more than 2^31 - 1 positions is refused before any work (an
    expanded view, so that no memory is needed)."""
    x = torch.zeros(1, 1, 1, 1).expand(1, 1, 65536, 32769)
    message = r"H \* W = 65536 \* 32769 exceeds 2147483647"
    with pytest.raises(ValueError, match="pyramid_pool: " + message):
        torch.ops.reidfast.pyramid_pool_forward(x, 2, [0], [2], "max", True)
    grad_out, argmax = torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="pyramid_pool_backward: " + message):
        torch.ops.reidfast.pyramid_pool_backward(grad_out, argmax, 2, [0], [2], "max", 65536, 32769, False)


def test_argmax_outside_its_window_is_refused():
    grad_out = torch.ones(1, 2, 3)
    argmax = torch.tensor([[[0, 1, 2], [7, 8, 2]]], dtype=torch.int32)  # window 1 is rows [2, 4)
    with pytest.raises(ValueError, match=r"argmax holds a position outside window 1 \(rows \[2, 4\)\)"):
        torch.ops.reidfast.pyramid_pool_backward(grad_out, argmax, 2, [0, 1], [1, 1], "max", 4, 2, False)


def bank_case(dtype=torch.float32, generator_seed=3):
    generator = torch.Generator().manual_seed(generator_seed)
    x = torch.randn(24, 10, generator=generator).to(dtype)
    labels = torch.arange(6).repeat_interleave(4)
    bank = torch.randn(50, 10, generator=generator).to(dtype)
    bank_labels = torch.arange(50) % 6
    return x, labels, bank, bank_labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("squared", [False, True])
def test_bank_gradient_only_on_request(dtype, squared):
    """ref_grad=False gives an empty [0, D] bank gradient and the same grad_x; ref_grad=True gives
    the bank's gradient in the bank's dtype."""
    x, labels, bank, bank_labels = bank_case(dtype)
    selection = torch.ops.reidfast.triplet_select_forward(x, labels, bank, bank_labels, False, 2, 1, squared)
    generator = torch.Generator().manual_seed(5)
    grads = torch.randn(2, 24, generator=generator).to(dtype)
    arguments = (grads[0], grads[1], x, bank, *selection, False, squared)
    grad_x, grad_bank = torch.ops.reidfast.triplet_select_backward(*arguments, True)
    frozen_x, frozen_bank = torch.ops.reidfast.triplet_select_backward(*arguments, False)
    assert grad_bank.shape == bank.shape and grad_bank.dtype == dtype
    assert frozen_bank.shape == (0, 10) and frozen_bank.dtype == dtype
    torch.testing.assert_close(frozen_x, grad_x, rtol=0, atol=0)
    assert grad_bank.abs().sum() > 0  # the selected partners' rows


def test_bank_gradient_is_empty_against_itself():
    x, labels, _, _ = bank_case()
    selection = torch.ops.reidfast.triplet_select_forward(x, labels, x, labels, True, 1, 1, False)
    grads = torch.ones(2, 24)
    _, grad_ref = torch.ops.reidfast.triplet_select_backward(grads[0], grads[1], x, x, *selection, True, False, True)
    assert grad_ref.shape == (0, 10)


def test_backward_refuses_an_index_outside_the_bank():
    x, labels, bank, bank_labels = bank_case()
    pos_dist, neg_dist, pos_index, neg_index = torch.ops.reidfast.triplet_select_forward(
        x, labels, bank, bank_labels, False, 1, 1, False
    )
    pos_index[3] = 50
    grads = torch.ones(2, 24)
    with pytest.raises(ValueError, match=r"index 50 of anchor 3 is outside \[-1, M = 50\)"):
        torch.ops.reidfast.triplet_select_backward(
            grads[0], grads[1], x, bank, pos_dist, neg_dist, pos_index, neg_index, False, False, False
        )


def assert_same_nan_pattern(compute, *inputs):
    """compute(backend, *leaves) -> output; the fused CPU backend against the reference: NaN at the
    same places of the output and of each input's gradient, the other values close."""
    results = []
    for backend in ("reference", "cpu"):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = compute(backend, *leaves)
        out.backward(torch.ones_like(out))
        results.append([out.detach(), *(leaf.grad for leaf in leaves)])
    for expected, got in zip(*results):
        assert torch.equal(got.isnan(), expected.isnan())
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["x", "bank", "both"])
@pytest.mark.parametrize("squared", [False, True])
def test_memory_bank_nan_pattern(value, where, squared):
    """Against a bank, the ops' gradients have NaN where the reference's have it: a non-finite entry
    makes its column NaN in the other operand's gradient (the reference's matrix product reaches it
    through zero coefficients) except where a live pair's partner holds it."""
    x, labels, bank, bank_labels = bank_case()
    if where in ("x", "both"):
        x[5, 3] = value
    if where in ("bank", "both"):
        bank[7, 9] = bank[12, 3] = value
    generator = torch.Generator().manual_seed(8)
    grad_pos, grad_neg = torch.randn(2, 24, generator=generator)
    x.requires_grad_(True)
    bank.requires_grad_(True)
    expected = triplet_select(x, labels, 2, 1, squared, ref=bank, ref_labels=bank_labels, backend="reference")
    expected_grads = torch.autograd.grad(expected[:2], (x, bank), (grad_pos, grad_neg))
    x, bank = x.detach(), bank.detach()
    selection = torch.ops.reidfast.triplet_select_forward(x, labels, bank, bank_labels, False, 2, 1, squared)
    for got, want in zip(selection, expected):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5, equal_nan=True)
    grads = torch.ops.reidfast.triplet_select_backward(grad_pos, grad_neg, x, bank, *selection, False, squared, True)
    for got, want in zip(grads, expected_grads):
        assert torch.equal(got.isnan(), want.isnan())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_adaptive_margin_nan_pattern_on_several_tiles(value):
    """A batch whose pair triangle spans several tiles (N^2 > 2^21) takes the per-tile gradient."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1500, 3, generator=generator, dtype=torch.float64)
    labels = torch.arange(1500) // 4
    x[700, 1] = value
    assert_same_nan_pattern(lambda backend, x: adaptive_margin_loss(x, labels, backend=backend), x)

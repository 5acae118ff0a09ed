"""Judging a low-precision result by the float64 rule: a kernel's error against the reference
computed in float64, relative to plain PyTorch's own error in the same dtype (STYLE.md, habit 7).

A fixed tolerance in float16 or bfloat16 is either too loose for a small result or too tight for a
large one; the error that the reference itself makes in that dtype, on the same inputs, scales
with the values and with the arithmetic's conditioning, so a kernel is asked to do as well as
plain PyTorch, within `factor`, plus a small `atol` for results that PyTorch happens to get exact.
"""

from collections.abc import Sequence

import torch


def _max_error(result: torch.Tensor, exact: torch.Tensor) -> float:
    """max |result - exact| over the entries where `exact` is not NaN (0.0 for no entries)."""
    finite = ~exact.isnan()
    if not finite.any():
        return 0.0
    return (result.double() - exact.double())[finite].abs().max().item()


def assert_close_to_float64(
    got, baseline, exact, *, factor: float, atol: float, baseline_exact=None, names: Sequence[str] = ()
):
    """Assert, for each tensor (or each of paired sequences of tensors, e.g. output and gradient):

        max |got - exact| <= factor * max |baseline - baseline_exact| + atol

    got (Tensor or sequence): the kernel's result in a low dtype.
    baseline (same structure): plain PyTorch's reference computed in that same dtype.
    exact (same structure): the reference computed in float64 on the same (upcast) inputs.
    baseline_exact (same structure, default `exact`): the float64 result to judge `baseline` by,
        where it differs: the gradient of a selection is exact only given the pairs selected, and
        a low dtype can decide a near-tie either way.
    NaN must be where `exact` has NaN (the NaN policy), and shapes must agree. `names` label the
    tensors of a sequence in the failure message.
    """
    if baseline_exact is None:
        baseline_exact = exact
    if isinstance(got, torch.Tensor):
        got, baseline, exact, baseline_exact = (got,), (baseline,), (exact,), (baseline_exact,)
    assert len(got) == len(baseline) == len(exact) == len(baseline_exact), "sequences differ in length"
    names = list(names) or [f"result {i}" for i in range(len(got))]
    for name, g, b, e, be in zip(names, got, baseline, exact, baseline_exact):
        assert g.shape == e.shape and b.shape == be.shape, f"{name}: shapes {g.shape}, {b.shape}, {e.shape}"
        assert torch.equal(g.isnan(), e.isnan()), f"{name}: NaN not where the float64 reference has NaN"
        error, pytorch_error = _max_error(g, e), _max_error(b, be)
        assert error <= factor * pytorch_error + atol, (
            f"{name} ({g.dtype}): max error {error:.3g} against float64, plain PyTorch's in the same dtype "
            f"{pytorch_error:.3g}; allowed {factor} x {pytorch_error:.3g} + {atol:.3g}"
        )

"""One check for the torch.compile tests of every op: the op compiles as one graph
(fullgraph=True) and gives eager's result and gradient."""

import torch


def assert_compiles_like_eager(fn, x, *args, inductor=True, rtol=None, atol=None):
    """Compiles fn(x, *args) -> Tensor with fullgraph=True (inductor, or aot_eager when the op's
    kernels are plain PyTorch) and compares its output and the gradient of its sum with respect to x
    (which requires grad) with an eager call."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="inductor" if inductor else "aot_eager")
    got, expected = compiled(x, *args), fn(x, *args)
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    (grad_got,) = torch.autograd.grad(got.sum(), x)
    (grad_expected,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(grad_got, grad_expected, rtol=rtol, atol=atol)
    assert grad_expected.abs().sum() > 0, "the compared gradient is all zeros"

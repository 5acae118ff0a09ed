"""Autograd rules shared by the fused ops."""

import torch


def double_backward_error(op: str) -> RuntimeError:
    """The error of a fused op asked for a second derivative.

    The fused backwards compute the gradient as numbers (a kept gradient, a scatter through chosen
    indices), not as a function of the inputs, so a graph built through them would silently give
    zero second derivatives; the reference backend, plain PyTorch, has them.
    """
    return RuntimeError(
        f"{op}: double backward (create_graph=True) is not supported by the fused backends; "
        "use backend='reference' for higher-order gradients"
    )


def refuse_double_backward(op: str) -> None:
    """Raises double_backward_error(op) when a fused op's backward runs with create_graph=True
    (in eager mode; a compiled graph's backward is traced once, with its own rules)."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise double_backward_error(op)

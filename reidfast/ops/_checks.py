"""Argument checks shared by the ops: each raises naming the argument and the value it got."""

import torch


def check_int(name: str, value, minimum: int) -> None:
    """`value` is an int (not a bool) and at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_tensor(name: str, value, dims: int, shape_doc: str) -> None:
    """`value` is a Tensor with `dims` dimensions (described as `shape_doc`, e.g. "[N, D]")."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor {shape_doc}, got {type(value).__name__}")
    if value.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {shape_doc}, got shape {tuple(value.shape)}")

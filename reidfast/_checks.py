"""Argument checks shared by the whole package: each raises naming the argument and the value it got."""

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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


def check_float(name: str, value, positive: bool = False) -> None:
    """`value` is a real number (an int or float, not a bool), and > 0 if `positive`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_float_dtype(name: str, value: torch.Tensor) -> None:
    """`value` is float32, float16, bfloat16 or float64."""
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {value.dtype}")


def check_labels(name: str, labels, count: int, count_name: str, device) -> None:
    """`labels` is an integer Tensor [count] on `device`."""
    check_tensor(name, labels, 1, f"[{count_name}]")
    if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape[0] != count:
        raise ValueError(f"{name} must hold {count_name}={count} labels, got {labels.shape[0]}")
    if labels.device != device:
        raise ValueError(f"{name} must be on the embeddings' device {device}, got {labels.device}")


def check_bool(name: str, value) -> None:
    """`value` is a bool (a flag that 0, 1 or None would set by accident)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_same_as(name: str, value: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    """`value` [*, D] has `other`'s dtype, device and last dimension D (a second set of embeddings)."""
    if value.dtype != other.dtype:
        raise TypeError(f"{name} must have {other_name}'s dtype {other.dtype}, got {value.dtype}")
    if value.device != other.device:
        raise ValueError(f"{name} must be on {other_name}'s device {other.device}, got {value.device}")
    if value.shape[-1] != other.shape[-1]:
        raise ValueError(
            f"{name} must have {other_name}'s embedding size D={other.shape[-1]}, got shape {tuple(value.shape)}"
        )

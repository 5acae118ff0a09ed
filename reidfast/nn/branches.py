"""Per-branch layers of part-based heads, computed for every branch at once.

A part-based head gives each of its K branches (pooled windows, stripes) its own small layers: a
1x1 convolution + BatchNorm + ReLU that reduces the pooled C-vector to a D-dimensional feature, and
a classifier on that feature. Written as K separate modules, that is 3K small kernel launches and
K small matrix products per pass; here each kind of layer holds all branches' weights in one
tensor with a leading branch dimension and runs as one batched matrix product (`torch.baddbmm`),
with one BatchNorm over the K * D channels. The results equal those of the K separate modules
(same arithmetic per branch; only the summation order of the products may differ).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reidfast._checks import check_float, check_int, check_tensor


def kaiming_fan_out_std(out_channels: int) -> float:
    """Standard deviation of He (Kaiming) normal initialisation of a 1x1 convolution, fan_out mode.

    For a Conv2d(in, out, 1) with ReLU, fan_out = out * 1 * 1, so std = sqrt(2 / out) (the
    initialisation of torchvision's ResNets and of the usual Re-ID heads).
    """
    return math.sqrt(2.0 / out_channels)


def _check_branch_input(x, branches: int, channels: int, channels_name: str) -> None:
    check_tensor("x", x, 3, f"[B, branches={branches}, {channels_name}={channels}]")
    if x.shape[1] != branches or x.shape[2] != channels:
        raise ValueError(
            f"x must have shape [B, branches={branches}, {channels_name}={channels}], got {tuple(x.shape)}"
        )


def _branch_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [B, K, I] times each branch's weight [K, I, O], plus bias [K, O]: [K, B, O] (branch first)."""
    branch_major = x.transpose(0, 1)  # [K, B, I]
    if bias is None:
        return torch.bmm(branch_major, weight)
    return torch.baddbmm(bias.unsqueeze(1), branch_major, weight)


class BranchEmbedding(nn.Module):
    """For every branch: 1x1 convolution (a linear map), BatchNorm, ReLU.

    Equivalent to `branches` independent `Conv2d(in_channels, out_channels, 1, bias=bias)` +
    `BatchNorm2d(out_channels)` + `ReLU` applied to the branches' pooled vectors as [B, C, 1, 1]
    maps (the branch op of the Pyramid paper, Fig. 3; MGN's and PCB's reductions with bias=False).
    A BatchNorm2d on a [B, D, 1, 1] map normalises each channel over the batch, so one
    `BatchNorm1d(branches * out_channels)` over the flattened features is the same computation,
    running statistics included (default momentum 0.1 and eps 1e-5, as BatchNorm2d's).

    Initialisation: weight ~ N(0, sqrt(2 / out_channels)) (He normal, fan_out, as
    `kaiming_fan_out_std`), bias 0, BatchNorm weight 1 and bias 0 — the common Re-ID practice.

    Args:
        branches: number of branches K (>= 1).
        in_channels: C, the length of each branch's input vector (>= 1).
        out_channels: D, the length of each branch's feature (>= 1).
        bias: whether the convolution has a bias.

    Attributes:
        weight (Tensor[K, C, D]): branch k's convolution is `x @ weight[k]`, i.e. the transpose of
            Conv2d's weight[:, :, 0, 0].
        bias (Tensor[K, D] or None).
        norm (nn.BatchNorm1d): over the K * D channels, branch-major (channel k * D + d).

    Shape:
        x (Tensor[B, K, C]) -> Tensor[B, K, D].
    """

    def __init__(self, branches: int, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        check_int("branches", branches, minimum=1)
        check_int("in_channels", in_channels, minimum=1)
        check_int("out_channels", out_channels, minimum=1)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__} {bias!r}")
        self.branches, self.in_channels, self.out_channels = branches, in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(branches, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(branches, out_channels)) if bias else None
        self.norm = nn.BatchNorm1d(branches * out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=kaiming_fan_out_std(self.out_channels))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_branch_input(x, self.branches, self.in_channels, "in_channels")
        projected = _branch_matmul(x, self.weight, self.bias)  # [K, B, D]
        flat = projected.transpose(0, 1).reshape(x.shape[0], self.branches * self.out_channels)
        return torch.relu(self.norm(flat)).view(x.shape[0], self.branches, self.out_channels)

    def extra_repr(self) -> str:
        return (
            f"branches={self.branches}, in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"bias={self.bias is not None}"
        )


class BranchClassifier(nn.Module):
    """For every branch: Dropout, then its own Linear(in_features, num_classes).

    Equivalent to `branches` independent `Dropout(dropout)` + `Linear(in_features, num_classes)`.
    The dropout mask is drawn per element of the [B, K, in_features] input, so each branch gets its
    own independent mask, as with separate Dropout calls per branch; in eval mode it is the identity.

    Initialisation: weight ~ N(0, std), bias 0 (the Pyramid paper's classifiers: std 0.001,
    docs/methods.md section 1).

    Args:
        branches: number of branches K (>= 1).
        in_features: D (>= 1).
        num_classes: number of identities N (>= 1).
        dropout: drop probability in [0, 1).
        std: standard deviation of the weight initialisation (> 0).

    Attributes:
        weight (Tensor[K, D, N]): branch k's logits are `x @ weight[k] + bias[k]` (the transpose of
            Linear's weight).
        bias (Tensor[K, N]).

    Shape:
        x (Tensor[B, K, D]) -> Tensor[B, K, N] (a transposed view of a branch-major result).
    """

    def __init__(self, branches: int, in_features: int, num_classes: int, dropout: float = 0.0, std: float = 0.001):
        super().__init__()
        check_int("branches", branches, minimum=1)
        check_int("in_features", in_features, minimum=1)
        check_int("num_classes", num_classes, minimum=1)
        check_dropout(dropout)
        check_float("std", std, positive=True)
        self.branches, self.in_features, self.num_classes = branches, in_features, num_classes
        self.std = float(std)
        self.dropout = nn.Dropout(dropout)
        self.weight = nn.Parameter(torch.empty(branches, in_features, num_classes))
        self.bias = nn.Parameter(torch.empty(branches, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.std)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_branch_input(x, self.branches, self.in_features, "in_features")
        return _branch_matmul(self.dropout(x), self.weight, self.bias).transpose(0, 1)

    def extra_repr(self) -> str:
        return (
            f"branches={self.branches}, in_features={self.in_features}, num_classes={self.num_classes}, "
            f"std={self.std}"
        )


def check_dropout(dropout) -> None:
    """`dropout` is a probability in [0, 1) (1 would zero every feature)."""
    check_float("dropout", dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")

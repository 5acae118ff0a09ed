"""The Pyramid model (docs/methods.md section 1): a ResNet with last stride 1 and a PyramidHead."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from reidfast.models.resnet import backbone_channels, check_backbone_args, resnet
from reidfast.nn import PyramidHead
from reidfast.nn.outputs import PartOutput


class ResNetPartModel(nn.Module):
    """A ResNet (last stride 1) whose feature map feeds a PyramidHead: the frame of Pyramid and PCB.

    Args:
        num_classes: identities of the training set (0: no classifiers, logits None).
        depth: ResNet depth (18, 34, 50, 101, 152).
        num_parts, levels, embed_dim, dropout, pool: the PyramidHead's (see reidfast.nn.PyramidHead).
        backbone_weights: path of a torchvision ResNet state dict, or None (see models.resnet).

    forward(x (Tensor[B, 3, H, W])):
        train mode: PartOutput(features [B, branches, embed_dim], logits [B, branches, num_classes]
        or None, embedding [B, branches * embed_dim]);
        eval mode: the embedding, Tensor[B, branches * embed_dim].
    """

    backbone_modules = ("backbone",)

    def __init__(
        self,
        num_classes: int,
        depth: int,
        num_parts: int,
        levels: Sequence[int] | None,
        embed_dim: int,
        dropout: float,
        pool: str,
        backbone_weights: str | os.PathLike | None,
    ):
        super().__init__()
        check_backbone_args(depth, 1, backbone_weights)
        # The head is built first: it checks its own arguments, before the costlier backbone exists.
        self.head = PyramidHead(
            backbone_channels(depth), num_classes, num_parts=num_parts, levels=levels, embed_dim=embed_dim,
            dropout=dropout, pool=pool,
        )
        self.backbone = resnet(depth, last_stride=1, weights=backbone_weights)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> PartOutput | torch.Tensor:
        output = self.head(self.backbone(x))
        return output if self.training else output.embedding


class Pyramid(ResNetPartModel):
    """The Pyramid model of docs/methods.md section 1 ("Pyramidal Person Re-IDentification via Multi-Loss
    Dynamic Training", CVPR 2019, arXiv:1810.12193, Fig. 2-3).

    ResNet (last stride 1) -> 21 windows of 1..6 adjacent stripes (GMP + GAP, summed) -> per branch
    1x1 conv C->128 (bias) + BatchNorm + ReLU -> per branch Dropout(0.2) + Linear(128, num_classes)
    (weight ~ N(0, 0.001), bias 0). The test embedding is the concatenation of the 21 branch
    features (2688-d).

    The paper only says "ResNet" and the authors' code uses ResNet-101; `depth` chooses (50 by
    default, the backbone of every other method here, so results compare).

    Parameters at the defaults (ResNet-50, 21 branches of 128): 23,508,032 (backbone) + 21 * 262,528
    (conv 2048*128 + 128, BatchNorm 2*128) = 29,021,120, plus 21 * 129 * num_classes for the
    classifiers.

    Args:
        num_classes: identities of the training set (0: no classifiers, logits None).
        depth: ResNet depth (18, 34, 50, 101, 152).
        num_parts: basic stripes n (6 in the paper).
        levels: pyramid levels to keep (None: all of 1..n; (1, 2, 5, 6) is "Pyramid-110011").
        embed_dim: features per branch (128).
        backbone_weights: path of a torchvision ResNet state dict, or None.

    forward(x (Tensor[B, 3, H, W])): train mode PartOutput (features [B, 21, 128], logits
    [B, 21, num_classes] or None, embedding [B, 2688]); eval mode Tensor[B, 2688] (at the defaults).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        depth: int = 50,
        num_parts: int = 6,
        levels: Sequence[int] | None = None,
        embed_dim: int = 128,
        backbone_weights: str | os.PathLike | None = None,
    ):
        super().__init__(
            num_classes, depth, num_parts, levels, embed_dim, dropout=0.2, pool="max+avg",
            backbone_weights=backbone_weights,
        )
